"""The training programs end to end on synthetic data: learning, exact resume after a kill, two processes,
push to a loopback Hub, and the errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.augment import LabeledTransform
from s5_hf.data import to_parquet_shards
from s5_hf.data.streams import DataSource, TrainStream
from s5_hf.data.synthetic import (
    make_fake_isaid, make_fake_potsdam, make_fake_unlabeled_pool, make_fake_vaihingen,
)
from s5_hf.evaluation import evaluate_sources
from s5_hf.testing.hub_server import LocalHub

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
        "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16}
ISPRS_64 = {"vaihingen": {"patch_size": 64, "stride": 64}, "potsdam": {"patch_size": 64, "stride": 64}}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"training_{name}", ROOT / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pretrain = load_script("pretrain_s4p")
finetune = load_script("finetune_mdf")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training-data")
    make_fake_isaid(root / "isaid", num_images=(4, 2), size=96)
    pool = make_fake_unlabeled_pool(root / "pool", num_images=16, size=64)
    files = sorted(p for p in pool.rglob("*") if p.is_file())
    rows = datasets.Dataset.from_dict({"image": [str(p) for p in files], "id": [p.stem for p in files],
                                       "source": [p.parent.name for p in files]}).cast_column("image", datasets.Image())
    to_parquet_shards(rows, root / "rs4p", shard_size_mb=1, min_shards=4, validate=False)
    make_fake_vaihingen(root / "vaihingen")
    make_fake_potsdam(root / "potsdam")
    return root


def s4p_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--labeled", f"isaid={data / 'isaid'}", "--labeled_options", '{"patch_size": 64, "stride": 64}',
            "--unlabeled", f"rs4p={data / 'rs4p'}", "--output_dir", str(out),
            "--config_overrides", json.dumps(TINY), "--crop_size", "64", "--batch_size", "2",
            "--learning_rate", "1e-3", "--logging_steps", "1", "--max_eval_samples", "2", *extra]


def mdf_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--train_datasets", f"vaihingen={data / 'vaihingen'}", f"potsdam={data / 'potsdam'}",
            "--reader_options", json.dumps(ISPRS_64), "--output_dir", str(out),
            "--config_overrides", json.dumps({**TINY, "drop_path_rate": 0.0}), "--part_features", "8",
            "--crop_size", "64", "--learning_rate", "5e-3", "--loss_start", "--logging_steps", "5", *extra]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_script(args: list[str], script: str, nproc: int = 1, **popen) -> subprocess.Popen:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        command = [sys.executable, str(ROOT / "training" / script), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--standalone", str(ROOT / "training" / script), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # torchrun's workers follow their agent
        process.communicate()
        raise
    assert process.returncode == 0, output[-4000:]
    return output


# ---- learning ----------------------------------------------------------------------------------------------------
def test_mdf_loss_falls_and_miou_rises_above_chance(data, tmp_path):
    out = tmp_path / "mdf"
    torch.manual_seed(42)  # the script seeds 42 too: `initial` is the model it starts from
    initial = finetune.build_model(finetune.parse_args(mdf_args(data, out, "--batch_size", "4")))
    sources = {name: DataSource.parse(f"{name}={data / name}") for name in ("vaihingen", "potsdam")}
    before = evaluate_sources(initial, sources, "test", crop_size=64, reader_options=ISPRS_64, max_samples=24)

    outcome = finetune.main(mdf_args(data, out, "--batch_size", "4", "--max_train_steps", "40", "--eval_steps", "0",
                                     "--max_eval_samples", "24"))
    losses = [r["loss"] for r in records(out) if "loss" in r]
    assert losses[-1] < 0.85 * losses[0], losses
    for task in ("vaihingen", "potsdam"):
        after = outcome["results"][task].scores.mean_iou
        # Uniform random guessing of 5 balanced classes scores an IoU of 1/9 per class.
        assert after > 0.25 and after > before[task].scores.mean_iou + 0.1, (task, before[task].scores, after)
    assert (out / "curves.png").is_file() and (out / "confusion_vaihingen.png").is_file()
    reloaded = S5ForSemanticSegmentation.from_pretrained(out / "model")
    assert reloaded.config.task_names == ["vaihingen", "potsdam"] and reloaded.config.use_experts


def test_s4p_trains_both_losses_and_validates(data, tmp_path):
    out = tmp_path / "s4p"
    outcome = pretrain.main(s4p_args(data, out, "--max_train_steps", "6", "--eval_steps", "3",
                                     "--conf_thresh", "0.0"))
    rows = [r for r in records(out) if "loss_x" in r]
    assert len(rows) == 6
    # With threshold 0 every valid pixel is confident, so the unlabeled loss is really trained.
    assert all(r["confident_ratio"] > 0.5 and r["loss_u"] > 0 for r in rows)
    assert all(abs(r["loss"] - (r["loss_x"] + r["loss_u"]) / 2) < 1e-5 for r in rows)
    assert rows[-1]["loss_x"] < rows[0]["loss_x"]
    assert [r["step"] for r in records(out) if "selection" in r] == [3, 6]
    assert outcome["results"]["isaid"].scores.num_pixels > 0


# ---- resume ------------------------------------------------------------------------------------------------------
def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    steps = ["--max_train_steps", "8", "--eval_steps", "0", "--checkpointing_steps", "2"]
    finish(run_script(s4p_args(data, tmp_path / "full", *steps), "pretrain_s4p.py"))

    killed = tmp_path / "killed"
    process = run_script(s4p_args(data, killed, *steps), "pretrain_s4p.py", start_new_session=True)
    deadline = time.time() + 240
    while not (killed / "checkpoint-000004").is_dir():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (killed / "model").exists()  # it really died before the end

    resumed = finish(run_script(s4p_args(data, killed, *steps, "--resume_from_checkpoint", "latest"),
                                "pretrain_s4p.py"))
    assert "Resumed from" in resumed
    assert not list(killed.glob("*.partial"))
    full, again = load_file(tmp_path / "full" / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert full.keys() == again.keys()
    different = [k for k in full if not torch.equal(full[k], again[k])]
    assert not different, different[:5]
    # Two checkpoints are kept (the default limit), the newest last.
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-000006", "checkpoint-000008"]


def test_resume_refuses_a_checkpoint_of_another_architecture(data, tmp_path):
    out = tmp_path / "run"
    pretrain.main(s4p_args(data, out, "--max_train_steps", "1", "--eval_steps", "0", "--checkpointing_steps", "1",
                           "--validation_split", ""))
    wider = s4p_args(data, out, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    wider[wider.index("--config_overrides") + 1] = json.dumps({**TINY, "hidden_size": 48})
    with pytest.raises(ValueError, match=r"hidden_size.*\(32, 48\)"):
        pretrain.main(wider)


# ---- two processes -----------------------------------------------------------------------------------------------
def test_two_processes_match_one(data, tmp_path):
    steps = ["--max_train_steps", "24", "--eval_steps", "0"]
    two = run_script(mdf_args(data, tmp_path / "two", "--batch_size", "2", *steps), "finetune_mdf.py", nproc=2)
    one = finetune.main(mdf_args(data, tmp_path / "one", "--batch_size", "4", *steps))
    finish(two)  # torchrun exits 0 only when both processes did
    two_results = json.loads((tmp_path / "two" / "results.json").read_text())["results"]

    # Distributed evaluation is exact: the 2-process scores of its model equal a 1-process evaluation of it.
    model = S5ForSemanticSegmentation.from_pretrained(tmp_path / "two" / "model")
    sources = {name: DataSource.parse(f"{name}={data / name}") for name in ("vaihingen", "potsdam")}
    single = evaluate_sources(model, sources, "test", crop_size=64, reader_options=ISPRS_64)
    for task in sources:
        # (abs 1e-4: logits differ in the last bits with the thread count, which can flip a rare pixel; rank 1
        # scoring with its own BatchNorm statistics instead of rank 0's moved mIoU by 1.6e-3 here.)
        assert two_results[task]["mIoU"] == pytest.approx(single[task].scores.mean_iou, abs=1e-4)
        # Training on 2 processes (batch 2 each) reaches what 1 process (batch 4) reaches.
        assert two_results[task]["mIoU"] == pytest.approx(one["results"][task].scores.mean_iou, abs=0.12)


# ---- Hub ---------------------------------------------------------------------------------------------------------
def test_push_to_hub_then_from_pretrained(data, tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    with LocalHub(tmp_path / "hub") as hub, hub.patched():
        outcome = finetune.main(mdf_args(data, tmp_path / "run", "--batch_size", "2", "--max_train_steps", "2",
                                         "--eval_steps", "0", "--max_eval_samples", "2", "--push_to_hub",
                                         "--hub_model_id", "local-user/s5-mdf-tiny"))
        assert outcome["commit_url"]
        pulled = AutoModelForSemanticSegmentation.from_pretrained("local-user/s5-mdf-tiny")
        from huggingface_hub import ModelCard
        card = ModelCard.load("local-user/s5-mdf-tiny")
    local = S5ForSemanticSegmentation.from_pretrained(tmp_path / "run" / "model")
    for (name, a), (_, b) in zip(local.state_dict().items(), pulled.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    entries = card.data.eval_results
    assert {e.dataset_name for e in entries} == {"ISPRS Vaihingen", "ISPRS Potsdam"}
    measured = {e.dataset_name: e.metric_value for e in entries}
    assert measured["ISPRS Vaihingen"] == round(100 * outcome["results"]["vaihingen"].scores.mean_iou, 2)


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_a_head_with_another_class_count_is_refused(data, tmp_path):
    config = S5Config(**TINY, tasks=[{"name": "isaid", "id2label": {i: f"c{i}" for i in range(5)}, "ignore_index": 255}])
    S5ForSemanticSegmentation(config).save_pretrained(tmp_path / "five")
    args = s4p_args(data, tmp_path / "run", "--max_train_steps", "1", "--model_name_or_path", str(tmp_path / "five"))
    del args[args.index("--config_overrides"): args.index("--config_overrides") + 2]
    with pytest.raises(ValueError, match="the data has 16 classes but the model's 'isaid' head predicts 5"):
        pretrain.main(args)


def test_nan_loss_stops_and_leaves_only_good_checkpoints(data, tmp_path, monkeypatch):
    import s5_hf.losses

    real = s5_hf.losses.masked_cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(s5_hf.losses, "masked_cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="Step 3: non-finite loss"):
        pretrain.main(s4p_args(data, out, "--max_train_steps", "5", "--checkpointing_steps", "1", "--eval_steps", "0",
                               "--checkpoints_total_limit", "5"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-000001", "checkpoint-000002"]
    weights = load_file(out / "checkpoint-000002" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_empty_or_too_small_data_is_a_clear_error():
    empty = datasets.IterableDataset.from_generator(lambda: iter(()), features=datasets.Features(
        {"image": datasets.Image(), "mask": datasets.Image(), "id": datasets.Value("string")}))
    stream = TrainStream(empty, LabeledTransform(64), batch_size=2, name="loveda=/data/empty")
    with pytest.raises(ValueError, match=r"loveda=/data/empty: no full batch of 2 .* fewer than 2 samples"):
        next(stream)


def test_argument_errors_name_the_problem(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        DataSource.parse(f"vaihingen={tmp_path / 'missing'}").load("train")
    with pytest.raises(ValueError, match="holds no Parquet shards, and 'mystery' is not a benchmark"):
        DataSource.parse(f"mystery={tmp_path}").load("train")
    with pytest.raises(ValueError, match=r"--loss_weights names \['loveda'\]"):
        finetune.parse_args(mdf_args(data, tmp_path, "--loss_weights", "loveda=2"))
    with pytest.raises(ValueError, match="must be NAME=VALUE"):
        finetune.parse_args(mdf_args(data, tmp_path, "--loss_weights", "2"))


def test_layer_decay_scales_each_block():
    from argparse import Namespace

    from s5_hf.train_loop import make_optimizer

    model = S5ForSemanticSegmentation(S5Config(**TINY, tasks=["potsdam"]))
    args = Namespace(learning_rate=1.0, layer_decay=0.5, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999)
    optimizer = make_optimizer(model, args)
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == [0.5 ** 5, 0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5, 1.0]  # embeddings, 4 blocks, neck + decoder
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert np.isclose(sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
                      sum(p.numel() for p in model.parameters()))
