"""Per-process data streams (no sample twice, none missed, resumable) and the evaluation protocols."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.data.streams import TrainStream, process_part
from s5_hf.evaluation.protocols import EvalProtocol, FlipAveraged, evaluate_task, predict_labels, protocol_for
from s5_hf.image_processing_s5 import S5ImageProcessor

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 32,
        "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16, "part_features": 8}


def ids_of(row, generator):
    # The generator is the per-sample one: its first draw identifies (seed, epoch, id).
    return row["id"], float(torch.rand((), generator=generator))


def rows(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"id": [f"s{i:03d}" for i in range(n)]})


@pytest.mark.parametrize("num_shards", [3, 4])  # 3: rows split one by one across ranks; 4: whole shards
def test_processes_read_disjoint_parts_that_cover_the_data(num_shards):
    data = rows(24).to_iterable_dataset(num_shards=num_shards)
    seen = []
    for rank in range(2):
        stream = TrainStream(process_part(data, rank, 2), ids_of, batch_size=2, seed=0, shuffle_buffer=8)
        seen += [i for _ in range(6) for i in next(stream)[0]]  # 6 batches of 2 = one epoch of a 12-row part
    assert sorted(seen) == [f"s{i:03d}" for i in range(24)]


def test_epochs_reshuffle_and_a_restored_stream_continues_identically():
    data = rows(10).to_iterable_dataset(num_shards=2)
    stream = TrainStream(data, ids_of, batch_size=4, seed=3, shuffle_buffer=10)
    first = [next(stream) for _ in range(5)]  # 2 full batches per epoch (the last 2 rows are dropped)
    assert stream.state_dict() == {"epoch": 2, "batches_in_epoch": 1}
    assert list(first[0][0]) != list(first[2][0])  # epoch 1 is another order
    assert not torch.equal(first[0][1], first[2][1])  # and other augmentation draws

    resumed = TrainStream(data, ids_of, batch_size=4, seed=3, shuffle_buffer=10)
    resumed.load_state_dict({"epoch": 1, "batches_in_epoch": 1})
    for expected in first[3:]:
        got = next(resumed)
        assert list(got[0]) == list(expected[0]) and torch.equal(got[1], expected[1])


def test_augmentation_depends_on_the_sample_not_on_the_process_count():
    data = rows(8).to_iterable_dataset(num_shards=2)
    one = TrainStream(data, ids_of, batch_size=8, seed=1, shuffle_buffer=0)
    draws = dict(zip(*next(one)))
    for rank in range(2):
        part = TrainStream(process_part(data, rank, 2), ids_of, batch_size=4, seed=1, shuffle_buffer=0)
        ids, values = next(part)
        assert all(draws[i] == float(v) for i, v in zip(ids, values))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return S5ForSemanticSegmentation(S5Config(**TINY, tasks=["potsdam", "loveda"])).eval()


def test_protocols_of_the_known_datasets():
    assert protocol_for("potsdam") == EvalProtocol("slide", flip=True, metric="mean_f1", official_inflation=True)
    assert protocol_for("loveda").mode == "resize" and protocol_for("isaid").exclude_from_mean == (0,)
    assert protocol_for("my-dataset") == EvalProtocol()


def test_flip_averaging_is_the_mean_of_both_probabilities(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (model(x, task="potsdam").logits.softmax(1)
                    + model(x.flip(-1), task="potsdam").logits.softmax(1).flip(-1)) / 2
        got = FlipAveraged(model)(x, task="potsdam").logits.softmax(1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["slide", "resize"])
def test_predictions_come_back_at_the_label_size(model, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    labels = predict_labels(model, image, "loveda", EvalProtocol(mode), 32, S5ImageProcessor())
    assert labels.shape == (40, 56) and labels.max() < 7


def test_batched_sliding_windows_give_the_same_labels(model):
    """--eval_batch_size: windows batched per forward give the labels of one window at a time (ISPRS protocol,
    sliding windows with flip averaging)."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (72, 88, 3), dtype=np.uint8))
    one = predict_labels(model, image, "potsdam", protocol_for("potsdam"), 32, S5ImageProcessor(), batch_size=1)
    for batch_size in (3, 16):
        batched = predict_labels(model, image, "potsdam", protocol_for("potsdam"), 32, S5ImageProcessor(),
                                 batch_size=batch_size)
        assert np.array_equal(batched, one), batch_size


def test_evaluate_task_scores_against_the_masks_and_refuses_mismatches(model):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    pred = predict_labels(model, image, "potsdam", protocol_for("potsdam"), 32, S5ImageProcessor())
    mask = pred.astype(np.uint8).copy()
    mask[:4] = 5  # clutter: ignored
    result = evaluate_task(model, [{"id": "a", "image": image, "mask": Image.fromarray(mask)}], "potsdam", crop_size=32)
    assert result.scores.overall_accuracy == 1.0 and result.scores.num_pixels == 32 * 28
    assert result.official.overall_accuracy > 0.99  # the official metric counts the clutter rows as "car" hits
    with pytest.raises(ValueError, match="image .* and mask .* differ"):
        evaluate_task(model, [{"id": "b", "image": image, "mask": Image.fromarray(mask[:16])}], "potsdam", crop_size=32)
    with pytest.raises(ValueError, match="has no mask"):
        evaluate_task(model, [{"id": "c", "image": image, "mask": None}], "potsdam", crop_size=32)


# ---- model selection never sees the reported test split (issue 10) ----------------------------------------------
def test_isprs_selects_on_held_out_training_tiles_and_reports_test(tmp_path):
    from s5_hf.data import load_benchmark
    from s5_hf.data.registry import BENCHMARKS, heldout_ids, stage_splits
    from s5_hf.data.streams import DataSource
    from s5_hf.data.synthetic import make_fake_vaihingen

    root = make_fake_vaihingen(tmp_path / "vaihingen")
    source = DataSource.parse(f"vaihingen={root}")
    assert source.default_splits() == ("train_minus_heldout", "heldout", "test")
    # Benchmarks with a validation split select on it and report it (as the paper); one source of truth: the readers.
    assert stage_splits("loveda") == ("train", "val", BENCHMARKS["loveda"].eval_split)

    def tiles(split, **options):
        return {row["id"].split("_y")[0] for row in load_benchmark("vaihingen", root, split, streaming=True,
                                                                   patch_size=64, **options)}

    train, heldout, rest, test = tiles("train"), tiles("heldout"), tiles("train_minus_heldout"), tiles("test")
    assert len(train) == 16 and len(heldout) == 2  # 1/8 of the 16 training areas
    assert heldout | rest == train and not heldout & rest and not heldout & test
    assert heldout == heldout_ids(sorted(train))  # a fixed function of the tile names: every process agrees
    assert len(tiles("heldout", heldout_fraction=0.25)) == 4
    with pytest.raises(ValueError, match="between 0 and 1"):
        heldout_ids(sorted(train), fraction=1.0)
    # Parquet or Hub sources have no tiles to hold out: the error says to name a split.
    shards = DataSource("vaihingen", "org/vaihingen-shards")
    with pytest.raises(ValueError, match="benchmark layouts only; name a split"):
        shards.load("heldout")


def test_results_state_their_split_sample_count_and_cap(model):
    images = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(5)]
    masks = [Image.fromarray(np.full((32, 32), i % 2, np.uint8)) for i in range(5)]
    rows = [{"image": im, "mask": m, "id": str(i)} for i, (im, m) in enumerate(zip(images, masks))]
    result = evaluate_task(model, rows, "potsdam", crop_size=32, max_samples=3)
    facts = result.describe()
    assert facts["num_samples"] == 3 and facts["max_samples"] == 3 and facts["reported_metric"] == "mean_f1"
    # Classes absent from both prediction and labels make NaN scores (the official ISPRS mF1 too): JSON gets
    # null, never NaN.
    assert facts["official_mF1"] is None and json.dumps(facts, allow_nan=False)
