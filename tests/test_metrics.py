"""Tests of s5_hf.evaluation.metrics and the local `evaluate` module: hand-computed scores, an independent per-pixel count,
the ignore rules, the reproduction of the official ISPRS inflation, two-process reduction and the PNG plot."""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from s5_hf.label_sets import VOID_ID
from s5_hf.evaluation.metrics import (
    EVALUATE_METRIC_SCRIPT,
    ConfusionMatrix,
    official_scores,
    save_confusion_matrix_png,
)


def random_batch(seed: int, num_classes: int, shape=(3, 16, 16), ignored=(VOID_ID,)):
    """Predictions and targets with ~20 % ignored targets and ~60 % correct predictions."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, size=shape))
    for ignored_id in ignored:
        target = np.where(rng.random(shape) < 0.2 / len(ignored), ignored_id, target)
    return torch.from_numpy(pred), torch.from_numpy(target)


def naive_matrix(pred, target, num_classes, ignored):
    """Per-pixel Python loop: the independent reference for the vectorised count."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t not in ignored:
            matrix[t, p] += 1
    return matrix


def official_reference(preds, targets, num_classes, ignore_index):
    """The official S5 evaluation (intersection/union histograms with bins 0..K, epsilon, plain means),
    re-implemented here from its description, image by image."""
    sums = np.zeros((4, num_classes))
    for pred, target in zip(preds, targets):
        output = pred.reshape(-1).copy()
        target = target.reshape(-1)
        output[target == ignore_index] = ignore_index
        intersection = output[output == target]
        bins = np.arange(num_classes + 1)
        area_i = np.histogram(intersection, bins=bins)[0]
        area_o = np.histogram(output, bins=bins)[0]
        area_t = np.histogram(target, bins=bins)[0]
        sums += np.stack([area_i, area_o + area_t - area_i, area_t, area_o])
    inter, union, tgt, out = sums
    iou = inter / (union + 1e-10)
    acc = inter / (tgt + 1e-10)
    prec = inter / (out + 1e-10)
    with np.errstate(invalid="ignore"):
        f1 = 2 * prec * acc / (prec + acc)
    return {"iou": iou, "f1": f1, "mIoU": np.mean(iou), "mF1": np.mean(f1), "OA": inter.sum() / (tgt.sum() + 1e-10)}


# --------------------------------------------------------------------------------------------------------------
# Counting and scores


def test_hand_computed_scores():
    # 3 classes, void 255. Valid (target, pred) pairs: (0,0) (0,0) (0,1) (1,1) (1,2) (2,2); the 255 pixel is out.
    target = torch.tensor([[0, 0, 0, 1], [1, 2, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = cm.compute()
    # class 0: tp 2, target 3, pred 2 -> IoU 2/3, precision 1, recall 2/3, F1 4/5
    # class 1: tp 1, target 2, pred 2 -> IoU 1/3, precision 1/2, recall 1/2, F1 1/2
    # class 2: tp 1, target 1, pred 2 -> IoU 1/2, precision 1/2, recall 1, F1 2/3
    np.testing.assert_allclose(s.iou, [2 / 3, 1 / 3, 1 / 2])
    np.testing.assert_allclose(s.precision, [1, 1 / 2, 1 / 2])
    np.testing.assert_allclose(s.recall, [2 / 3, 1 / 2, 1])
    np.testing.assert_allclose(s.accuracy, s.recall)
    np.testing.assert_allclose(s.f1, [4 / 5, 1 / 2, 2 / 3])
    assert s.mean_iou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert s.mean_f1 == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert s.mean_accuracy == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert s.overall_accuracy == pytest.approx(4 / 6)
    assert s.num_pixels == 6


def test_matrix_matches_per_pixel_loop_over_batches():
    cm = ConfusionMatrix(5, ignore_index=5, extra_ignore=(VOID_ID,))
    expected = np.zeros((5, 5), dtype=np.int64)
    for seed in range(3):
        pred, target = random_batch(seed, 5, ignored=(5, VOID_ID))
        cm.update(pred, target)
        expected += naive_matrix(pred, target, 5, {5, VOID_ID})
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert cm.matrix.dtype == torch.int64
    cm.reset()
    assert cm.matrix.sum() == 0


def test_ignore_index_and_void_are_both_excluded():
    # ISPRS: 5 classes, clutter 5 ignored; 255 also ignored. Clutter predicted as car must not count.
    cm = ConfusionMatrix.for_task("vaihingen")
    assert (cm.num_classes, cm.ignore_index) == (5, 5)
    assert cm.class_names[4] == "car"
    target = torch.tensor([4, 5, 5, 255, 0])
    pred = torch.tensor([4, 4, 4, 4, 0])
    cm.update(pred, target)
    s = cm.compute()
    assert cm.matrix.sum() == 2
    assert s.iou[4] == 1.0 and s.iou[0] == 1.0
    assert all(math.isnan(v) for v in s.iou[1:4])


def test_absent_classes_are_nan_and_skipped_in_means():
    cm = ConfusionMatrix(4)
    # class 2 never appears; class 3 is predicted once but never a target.
    cm.update(torch.tensor([0, 1, 1, 3]), torch.tensor([0, 1, 0, 1]))
    s = cm.compute()
    assert math.isnan(s.iou[2]) and math.isnan(s.f1[2]) and math.isnan(s.precision[2]) and math.isnan(s.recall[2])
    assert s.iou[3] == 0.0 and s.f1[3] == 0.0 and s.precision[3] == 0.0 and math.isnan(s.recall[3])
    # IoU: class 0 = 1/2, class 1 = 1/3 (tp 1, target 2, pred 2), class 3 = 0.
    assert s.mean_iou == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert s.mean_accuracy == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert s.overall_accuracy == pytest.approx(2 / 4)
    # Leaving class 0 out of the means (the official S4P validation skips background).
    assert cm.compute(exclude_from_mean=(0,)).mean_iou == pytest.approx((1 / 3 + 0) / 2)


def test_empty_matrix_scores_are_nan():
    s = ConfusionMatrix(2).compute()
    assert math.isnan(s.mean_iou) and math.isnan(s.overall_accuracy) and s.num_pixels == 0


@pytest.mark.parametrize(
    "pred, target, error, text",
    [
        (torch.tensor([0, 1, 2]), torch.tensor([0, 6, 7]), ValueError, "[6, 7]"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, -1, 1]), ValueError, "[-1]"),
        (torch.tensor([0, 5, 1]), torch.tensor([0, 1, 1]), ValueError, "Predicted ids [5]"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), TypeError, "argmax"),
        (torch.tensor([0, 1]), torch.tensor([0, 1, 1]), ValueError, "shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(pred, target, error, text):
    cm = ConfusionMatrix(5, ignore_index=5)
    with pytest.raises(error) as info:
        cm.update(pred, target)
    assert text in str(info.value)
    assert cm.matrix.sum() == 0  # nothing half-counted


def test_constructor_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="class names"):
        ConfusionMatrix(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="real classes"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ValueError, match="exclude class 7"):
        ConfusionMatrix(3).compute(exclude_from_mean=(7,))


def test_format_table_lists_classes_in_percent():
    cm = ConfusionMatrix(3, class_names=["road", "tree", "water"])
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    table = cm.compute().format_table()
    lines = table.splitlines()
    assert lines[0].startswith("| class | IoU | F1")
    # road: tp 1, target 1, pred 2 -> IoU 50 %, F1 2/3; water never appears -> n/a.
    assert lines[2] == "| road | 50.00 | 66.67 | 50.00 | 100.00 |"
    assert lines[4] == "| water | n/a | n/a | n/a | n/a |"
    assert "Overall accuracy: 66.67 (3 pixels)." in table


# --------------------------------------------------------------------------------------------------------------
# The official ISPRS inflation


def test_official_scores_inflate_car_as_predicted_by_hand():
    # Vaihingen: 5 classes, clutter = 5 = ignore index. Three clutter pixels, predicted as 2, 4 and 3.
    target = torch.tensor([0, 0, 1, 4, 4, 5, 5, 5])
    pred = torch.tensor([0, 1, 1, 4, 0, 2, 4, 3])
    cm = ConfusionMatrix.for_task("vaihingen")
    cm.update(pred, target)

    ours = cm.compute()
    # Scored pixels (0,0) (0,1) (1,1) (4,4) (4,0): car tp 1, target 2, pred 1 -> IoU 1/2, F1 2/3.
    assert ours.iou[4] == pytest.approx(1 / 2)
    assert ours.f1[4] == pytest.approx(2 / 3)
    assert ours.mean_iou == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)  # classes 2 and 3 absent: skipped
    assert ours.overall_accuracy == pytest.approx(3 / 5)

    paper = official_scores(cm)
    # Each clutter pixel becomes a correct car pixel: car intersection 1+3, target 2+3, prediction 1+3
    # -> IoU 4/5, precision 1, recall 4/5, F1 8/9.
    assert paper.iou[4] == pytest.approx(4 / 5)
    assert paper.f1[4] == pytest.approx(8 / 9)
    assert paper.iou[4] > ours.iou[4]
    # Other classes are unchanged; absent classes score 0 (epsilon) and count in the plain mean.
    np.testing.assert_allclose(paper.iou[:2], ours.iou[:2])
    assert paper.iou[2] == pytest.approx(0) and paper.iou[3] == pytest.approx(0)
    assert paper.mean_iou == pytest.approx((1 / 3 + 1 / 2 + 0 + 0 + 4 / 5) / 5)
    assert paper.overall_accuracy == pytest.approx((1 + 1 + 4) / (2 + 1 + 5))


def test_official_scores_match_reimplementation_of_official_evaluation():
    # Random ISPRS-like data with clutter (5) and void (255) targets, accumulated over several images.
    cm = ConfusionMatrix(5, ignore_index=5)
    preds, targets = [], []
    for seed in range(4):
        pred, target = random_batch(seed, 5, shape=(12, 12), ignored=(5, VOID_ID))
        cm.update(pred, target)
        preds.append(pred.numpy())
        targets.append(target.numpy())
    reference = official_reference(preds, targets, 5, 5)
    paper = official_scores(cm)
    np.testing.assert_allclose(paper.iou, reference["iou"], rtol=1e-12)
    np.testing.assert_allclose(paper.f1, reference["f1"], rtol=1e-12)
    assert paper.mean_iou == pytest.approx(reference["mIoU"], rel=1e-12)
    assert paper.mean_f1 == pytest.approx(reference["mF1"], rel=1e-12)
    assert paper.overall_accuracy == pytest.approx(reference["OA"], rel=1e-12)
    # Void pixels keep their predictions in the official count, so it differs beyond the car class too.
    assert not np.allclose(paper.iou[:4], cm.compute().iou[:4])


def test_official_scores_without_the_bug_when_ignore_is_255():
    cm = ConfusionMatrix(4)
    pred, target = random_batch(7, 4)
    cm.update(pred, target)
    reference = official_reference([pred.numpy()], [target.numpy()], 4, 255)
    paper, ours = official_scores(cm), cm.compute()
    np.testing.assert_allclose(paper.iou, reference["iou"], rtol=1e-12)
    np.testing.assert_allclose(paper.iou, ours.iou, rtol=1e-9)


# --------------------------------------------------------------------------------------------------------------
# Reduction across processes


def test_reduce_in_one_process_is_an_independent_copy():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    reduced = cm.reduce()
    assert torch.equal(reduced.matrix, cm.matrix)
    reduced.update(torch.tensor([0]), torch.tensor([0]))
    assert cm.matrix[0, 0] == 1 and reduced.matrix[0, 0] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reduce_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)  # as DataLoader workers do after a fork
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        # A forked child inherits the parent's Accelerate singletons (if an earlier test made any): start afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == world_size
        cm = ConfusionMatrix(5, ignore_index=5)
        for seed in range(rank, 6, world_size):  # each process scores its own share of the six batches
            cm.update(*random_batch(seed, 5, ignored=(5, VOID_ID)))
        by_torch = cm.reduce()
        by_accelerate = cm.reduce(accelerator)
        if rank == 0:
            for name, reduced in (("torch", by_torch), ("accelerate", by_accelerate)):
                np.save(os.path.join(out_dir, f"{name}_matrix.npy"), reduced.matrix.numpy())
                np.save(os.path.join(out_dir, f"{name}_extra.npy"),
                        np.append(reduced.void_predictions.numpy(), int(reduced.ignore_index_pixels)))
    finally:
        dist.destroy_process_group()


def test_two_process_reduce_equals_single_process(tmp_path):
    # Forked, not spawned: spawned children re-import transformers (seconds each); forked ones start at once.
    mp.start_processes(_reduce_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    single = ConfusionMatrix(5, ignore_index=5)
    for seed in range(6):
        single.update(*random_batch(seed, 5, ignored=(5, VOID_ID)))
    extra = np.append(single.void_predictions.numpy(), int(single.ignore_index_pixels))
    for name in ("torch", "accelerate"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}_matrix.npy"), single.matrix.numpy())
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}_extra.npy"), extra)


# --------------------------------------------------------------------------------------------------------------
# Plot


def test_confusion_matrix_png(tmp_path):
    cm = ConfusionMatrix(3, class_names=["impervious_surface", "car", "tree"])
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))  # rows 0 and 1 fully correct, row 2 empty
    path = save_confusion_matrix_png(cm, None, tmp_path / "plots" / "cm.png", title="toy")
    image = np.asarray(Image.open(path).convert("RGB"))
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    assert (8, 48, 107) in colors  # 100 % cells
    assert (200, 200, 200) in colors  # the empty target row
    assert image.shape[1] > 3 * 56 and image.shape[0] > 3 * 56
    with pytest.raises(ValueError, match="square"):
        save_confusion_matrix_png(np.zeros((2, 3)), ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="class names"):
        save_confusion_matrix_png(np.eye(2), ["a"], tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------------------------
# The `evaluate` module, loaded by path in a fresh process with every network connection refused


def test_evaluate_module_loads_offline_and_matches(tmp_path):
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, size=(8, 6)) for _ in range(3)]
    refs = [np.where(rng.random((8, 6)) < 0.15, 5, rng.integers(0, 5, size=(8, 6))) for _ in range(3)]
    (tmp_path / "inputs.json").write_text(json.dumps({"preds": [p.tolist() for p in preds],
                                                      "refs": [r.tolist() for r in refs]}))
    script = textwrap.dedent(
        """
        import json, socket, sys

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
        from s5_hf.evaluation.metrics import load_evaluate_metric

        data = json.load(open(sys.argv[1]))
        metric = load_evaluate_metric(keep_in_memory=True)
        for pred, ref in zip(data["preds"], data["refs"]):
            metric.add_batch(predictions=[pred], references=[ref])
        result = metric.compute(num_labels=5, ignore_index=5, official=True)
        as_json = {key: (value.tolist() if hasattr(value, "tolist") else value) for key, value in result.items()}
        print(json.dumps(as_json))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf_home"))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "inputs.json")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])

    cm = ConfusionMatrix(5, ignore_index=5)
    for pred, ref in zip(preds, refs):
        cm.update(torch.from_numpy(pred), torch.from_numpy(ref))
    ours, paper = cm.compute(), official_scores(cm)
    assert result["mean_iou"] == pytest.approx(ours.mean_iou)
    assert result["mean_f1"] == pytest.approx(ours.mean_f1)
    assert result["overall_accuracy"] == pytest.approx(ours.overall_accuracy)
    np.testing.assert_allclose(result["per_category_iou"], ours.iou)
    assert result["official_mean_iou"] == pytest.approx(paper.mean_iou)
    assert EVALUATE_METRIC_SCRIPT.is_file() and (EVALUATE_METRIC_SCRIPT.parent / "README.md").is_file()
