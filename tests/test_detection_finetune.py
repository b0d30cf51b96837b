"""`s5_hf.training.detection` (training/finetune_detection.py) on the synthetic DIOR-R and DOTA-v2 look-alikes: runs, evaluates, saves, resumes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from s5_hf import S5Config, S5ForSemanticSegmentation, files
from s5_hf.detection import make_fake_dior_r, make_fake_dota
from s5_hf.modeling_s5_detection import S5ForOrientedDetection

OVERRIDES = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "out_indices": [1, 2, 3, 4],
             "part_features": 8, "fpn_channels": 16, "roi_fc_dim": 32, "anchor_scales": [4], "rpn_pre_nms": 100,
             "rpn_max_proposals": 50, "rpn_num_samples": 32, "roi_num_samples": 32, "drop_path_rate": 0.0}


def load_script():
    from s5_hf.training import detection

    return detection


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("det_data")
    return (make_fake_dior_r(base / "dior", num_trainval=6, num_test=2, size=64),
            make_fake_dota(base / "dota", num_train=2, num_val=1, size=128))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def argv(roots, out, *extra):
    return ["--dior_root", str(roots[0]), "--dota_root", str(roots[1]), "--output_dir", str(out),
            "--preset", "vit-b", "--config_overrides", json.dumps(OVERRIDES), "--dior_classes", "3",
            "--dota_classes", "3", "--image_size", "64", "--dota_patch_size", "64", "--dota_overlap", "16",
            "--epochs", "2", "--warmup_steps", "2", "--checkpointing_steps", "2", *extra]


def test_runs_evaluates_saves_and_resumes(roots, tmp_path):
    script = load_script()
    full = script.main(argv(roots, tmp_path / "full"))
    steps = full["steps"]
    assert steps >= 4  # 2 epochs of the longer dataset at 2 images per step
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == steps and all("dior_test_map" in m for m in metrics if m["step"] % (steps // 2) == 0)
    assert metrics[0]["lr"] < metrics[2]["lr"]  # warm-up from 0.001x
    model = S5ForOrientedDetection.from_pretrained(tmp_path / "full" / "model")
    assert model.config.task_names == ["dior", "dota"] and model.config.get_task("dior").num_labels == 3
    assert sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith("checkpoint-"))[-1] == f"checkpoint-{steps:06d}"

    # Stop after 2 steps, resume from that checkpoint: the same final weights as the uninterrupted run.
    script.main(argv(roots, tmp_path / "part", "--max_steps", "2"))
    script.main(argv(roots, tmp_path / "part", "--resume_from_checkpoint", str(tmp_path / "part" / "checkpoint-000002")))
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "part" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_starts_from_a_single_task_model(roots, tmp_path):
    s4p = S5ForSemanticSegmentation(S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=32,
                                             out_indices=[1, 2, 3, 4], tasks=["isaid"]))
    s4p.save_pretrained(tmp_path / "s4p")
    overrides = {k: v for k, v in OVERRIDES.items() if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                                 "out_indices")}
    args = argv(roots, tmp_path / "out", "--model_name_or_path", str(tmp_path / "s4p"), "--max_steps", "1",
                "--gradient_checkpointing")
    args[args.index("--config_overrides") + 1] = json.dumps(overrides)
    load_script().main(args)
    model = S5ForOrientedDetection.from_pretrained(tmp_path / "out" / "model")
    assert model.s5.embeddings.position_embeddings.shape[1] == 16  # 64 px / 16: resized from the 2 x 2 table


def test_bad_arguments_are_named(roots, tmp_path):
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(argv(roots, tmp_path, "--per_dataset_batch", "0"))
    with pytest.raises(SystemExit):
        script.parse_args(argv(roots, tmp_path, "--push_to_hub", "--hub_model_id", "not a/repo/id"))
    bad = argv(roots, tmp_path)
    bad[bad.index("--config_overrides") + 1] = "{not json"
    with pytest.raises(SystemExit):
        script.parse_args(bad)


def test_run_folder_rules(roots, tmp_path):
    """One run per output folder, as segmentation: another run's folder and foreign files are refused."""
    script = load_script()
    out = tmp_path / "run"
    script.main(argv(roots, out, "--max_steps", "1", "--checkpointing_steps", "1"))
    manifest = json.loads((out / files.MANIFEST_NAME).read_text())
    assert {"model", "metrics.jsonl", "checkpoint-000001"} <= set(manifest["entries"])
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        script.main(argv(roots, out, "--max_steps", "1"))
    (out / "notes.txt").write_text("mine")  # not written by the run: --overwrite_output_dir must leave it
    first = manifest["run_id"]
    assert script.main(argv(roots, out, "--max_steps", "1", "--overwrite_output_dir"))["run_id"] != first
    assert (out / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        script.main(argv(roots, foreign, "--max_steps", "1"))
    assert sorted(p.name for p in foreign.iterdir()) == ["data.csv"]


def test_damaged_checkpoint_is_refused(roots, tmp_path):
    script = load_script()
    out = tmp_path / "run"
    script.main(argv(roots, out, "--max_steps", "1", "--checkpointing_steps", "1"))
    checkpoint = out / "checkpoint-000001"
    assert (checkpoint / "integrity.json").is_file()
    weights = next(checkpoint.glob("model*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="integrity check"):
        script.main(argv(roots, out, "--resume_from_checkpoint", "latest"))


def test_push_to_hub_card_carries_the_runs_map(roots, tmp_path, hub, monkeypatch):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForObjectDetection

    script = load_script()
    # A 2-step tiny run scores 0.0, which a card could show without reading the run: the evaluation is wrapped so
    # that the run measures a distinctive value (the real evaluation still runs).
    evaluate = script.evaluate_dior
    monkeypatch.setattr(script, "evaluate_dior", lambda *a: evaluate(*a) + 0.4321)
    out = tmp_path / "run"
    result = script.main(argv(roots, out, "--max_steps", "2", "--push_to_hub", "--hub_model_id", "someone/s5-det-tiny"))
    assert result["commit_url"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = [r["dior_test_map"] for r in logged if r.get("dior_test_map") is not None][-1]
    assert measured >= 0.4321
    card = ModelCard.load("someone/s5-det-tiny")
    (entry,) = card.data.eval_results
    assert (entry.task_type, entry.metric_type, entry.dataset_name) == ("object-detection", "map", "DIOR-R")
    assert entry.metric_value == round(100 * measured, 2)
    model = AutoModelForObjectDetection.from_pretrained("someone/s5-det-tiny", trust_remote_code=True)
    local = S5ForOrientedDetection.from_pretrained(out / "model")
    a, b = model.state_dict(), local.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parquet_shards_train_exactly_as_the_raw_layouts(roots, tmp_path):
    """DIOR-R (trainval + test) and DOTA-v2 (patches) written as Parquet shards give the same run as the folders."""
    from s5_hf.configuration_s5_detection import DIOR_R_CLASSES, DOTA_V2_CLASSES
    from s5_hf.data import to_parquet_shards
    from s5_hf.detection import read_dior_r, read_dota
    from s5_hf.detection.shards import detection_dataset

    for split in ("trainval", "test"):  # other splits already in the folder are kept
        to_parquet_shards(detection_dataset(read_dior_r(roots[0], split, DIOR_R_CLASSES[:3]), "dior"),
                          tmp_path / "dior_shards", split=split, validate=False)
    dota = detection_dataset(read_dota(roots[1], "train", DOTA_V2_CLASSES[:3], 64, 16), "dota")
    to_parquet_shards(dota, tmp_path / "dota_shards", validate=False)
    script = load_script()
    script.main(argv(roots, tmp_path / "folders", "--max_steps", "2"))
    script.main(argv((tmp_path / "dior_shards", tmp_path / "dota_shards"), tmp_path / "shards", "--max_steps", "2"))
    a = load_file(tmp_path / "folders" / "model" / "model.safetensors")
    b = load_file(tmp_path / "shards" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Rows of the other dataset, or labels beyond the classes, are refused with the row named.
    to_parquet_shards(dota, tmp_path / "wrong", split="trainval", validate=False)
    with pytest.raises(ValueError, match=r"row '.*' holds 'dota' boxes, not 'dior'"):
        script.main(argv((tmp_path / "wrong", tmp_path / "dota_shards"), tmp_path / "mixed", "--max_steps", "1"))
    with pytest.raises(ValueError, match=r"has label 2, outside the 2 classes of dota"):
        script.main(argv((tmp_path / "dior_shards", tmp_path / "dota_shards"), tmp_path / "few", "--max_steps", "1",
                         "--dota_classes", "2"))
