"""Model cards: the committed cards equal a fresh render, their metadata is valid, their facts come from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from s5_hf.hub.cards import (
    PENDING_MODELS,
    RELEASED_MODELS,
    build_model_card,
    main,
    released_card,
    validate_card_text,
)
from s5_hf.hub.params import count_parameters

CARDS = Path(__file__).resolve().parents[1] / "model_cards"


def metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {model.name: str(released_card(model)) + "\n" for model in RELEASED_MODELS + PENDING_MODELS}


def test_committed_cards_equal_a_fresh_render(rendered):
    committed = {p.stem: p.read_text() for p in CARDS.glob("s5-*.md")}
    released = {model.name: rendered[model.name] for model in RELEASED_MODELS}
    assert sorted(committed) == sorted(released), "run: python -m s5_hf.hub.cards --out model_cards/"
    for name, text in released.items():
        assert committed[name] == text, f"{name}.md is stale; run: python -m s5_hf.hub.cards --out model_cards/"


def test_check_mode_detects_stale_cards(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    card = tmp_path / "s5-vit-l-mdf.md"
    card.write_text(card.read_text().replace("80.72", "80.73"))
    assert main(["--out", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("model", RELEASED_MODELS + PENDING_MODELS, ids=lambda m: m.name)
def test_card_metadata_is_valid(model, rendered):
    text = rendered[model.name]
    meta = validate_card_text(text)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    # The card also loads through huggingface_hub, which parses model-index into EvalResults.
    card = ModelCard(text)
    if model.stage == "detection":
        assert meta["pipeline_tag"] == "object-detection" and "oriented-object-detection" in meta["tags"]
        results = card.data.eval_results
        paper = {"vit-b": (72.95, 57.2), "vit-l": (75.21, 59.71), "vit-h": (75.30, 59.89)}[model.preset]
        assert [(r.dataset_name, r.metric_type, r.metric_name, r.task_type, r.metric_value) for r in results] == [
            ("DIOR-R", "map", "mAP", "object-detection", paper[0]), ("DOTA-v2", "map", "mAP", "object-detection", paper[1])]
        assert all(r.source_url == "https://arxiv.org/abs/2508.12409" for r in results)
        assert "AutoModelForObjectDetection" in text and "post_process_object_detection" in text
        assert "AutoModelForSemanticSegmentation" not in text and "clutter" not in text
        return
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {"remote-sensing", "semantic-segmentation", "earth-observation", "vision-transformer"} <= set(meta["tags"])
    if model.stage == "mdf":
        assert "mixture-of-experts" in meta["tags"]
        results = card.data.eval_results
        assert [r.dataset_name for r in results] == ["ISPRS Vaihingen", "ISPRS Potsdam", "OpenEarthMap", "LoveDA"]
        assert {r.dataset_name: r.metric_type for r in results}["ISPRS Potsdam"] == "f1"
        assert all(r.metric_type == "mean_iou" for r in results if r.dataset_name != "ISPRS Potsdam")
        assert all(r.source_url == "https://arxiv.org/abs/2508.12409" for r in results)
        assert all(50 < r.metric_value < 100 for r in results)
        assert "clutter" in text and "inflates" in text  # the ISPRS metric caveat
        assert meta["base_model"].endswith(f"s5-{model.preset}-s4p")
    else:
        assert "model-index" not in meta and "mixture-of-experts" not in meta["tags"]


@pytest.mark.parametrize("model", RELEASED_MODELS + PENDING_MODELS, ids=lambda m: m.name)
def test_card_facts_come_from_the_configuration(model, rendered):
    text = rendered[model.name]
    config = model.config()
    assert f"| parameters | {count_parameters(config):,} " in text
    if model.stage != "detection":
        variant = "single" if model.stage == "s4p" else "multiple"
        assert count_parameters(config) == count_parameters(model.preset, variant)
    for spec in config.tasks:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{spec.name}` |"))
        for name in spec.id2label.values():
            assert name.replace("_", " ") in row
    assert "arXiv:2508.12409" in text and "@inproceedings" in text and "task=" in text
    if model.stage != "detection":
        assert "set_default_task" in text and 'pipeline("image-segmentation"' in text


def test_card_for_a_trained_folder_claims_no_results(tiny_config):
    config = tiny_config(part_features=0, tasks=["loveda", {"name": "roofs", "id2label": {0: "flat", 1: "pitched"}}])
    text = str(build_model_card(config, "someone/tiny-s5"))
    meta = validate_card_text(text)
    assert "model-index" not in meta and "## Results" not in text
    assert 'from_pretrained("someone/tiny-s5")' in text
    assert "| `roofs` | flat, pitched | 255 |" in text
    assert "mixture-of-experts" not in meta["tags"]  # part_features=0: shared backbone


def test_validation_rejects_broken_metadata(rendered):
    text = rendered["s5-vit-b-mdf"]
    with pytest.raises(ValueError, match="YAML"):
        validate_card_text(text.replace("license: apache-2.0", "license: [apache"))
    with pytest.raises(ValueError, match="numeric value"):
        validate_card_text(text.replace("value: 79.85", "value: high"))
    with pytest.raises(ValueError, match="source.url"):
        validate_card_text(text.replace("url: https://arxiv.org/abs/2508.12409", "url: ''"))
    with pytest.raises(ValueError, match="license"):
        validate_card_text(text.replace("license: apache-2.0\n", ""))



def test_released_card_states_the_weights_digest_and_a_lora_card_its_adapters(tiny_config):
    model = next(m for m in RELEASED_MODELS if m.name == "s5-vit-b-mdf")
    digest = "ab" * 32
    text = str(released_card(model, weights_sha256=digest))
    validate_card_text(text)
    assert f"`{digest}`" in text and "official_conversion.json" in text
    assert digest not in str(released_card(model))  # the committed cards carry none until a digest is pinned
    config = tiny_config(part_features=0, tasks=["potsdam", "loveda"])
    text = str(build_model_card(config, "someone/lora-s5", lora_adapters=["potsdam", "loveda"]))
    meta = validate_card_text(text)
    assert {"lora", "peft"} <= set(meta["tags"]) and "## LoRA adapters" in text
    assert "`lora/potsdam/`, `lora/loveda/`" in text and 'subfolder="lora/potsdam"' in text
    assert "## LoRA adapters" not in str(build_model_card(config, "someone/plain-s5"))


def test_eval_results_take_the_metric_from_the_evaluation_protocol():
    from s5_hf.evaluation.protocols import PROTOCOLS
    from s5_hf.hub.cards import METRICS, measured_eval_result, paper_eval_results, reported_metric

    for task, protocol in PROTOCOLS.items():
        assert reported_metric(task) == protocol.metric
    assert reported_metric("potsdam") == "mean_f1" and reported_metric("dior") == "map"
    assert reported_metric("my-boxes", detection=True) == "map" and reported_metric("my-crops") == "mean_iou"
    (potsdam,) = paper_eval_results("vit-b", ["potsdam"])
    assert (potsdam.metric_type, potsdam.metric_name, potsdam.metric_value) == (*METRICS["mean_f1"], 92.40)
    run = measured_eval_result("dior", 0.43217, "someone/det", "DIOR-R test split, 8 images")
    assert (run.task_type, run.metric_type, run.dataset_name, run.dataset_split, run.metric_value) == (
        "object-detection", "map", "DIOR-R", "test", 43.22)
    assert run.source_url.endswith("/someone/det") and "8 images" in run.source_name
    seg = measured_eval_result("loveda", 0.5, "someone/seg", "val split", split="val")
    assert (seg.task_type, seg.metric_name, seg.dataset_split) == ("image-segmentation", "mIoU", "val")


def test_card_for_a_trained_detector_states_the_runs_map_not_the_papers():
    from s5_hf import S5DetectionConfig
    from s5_hf.hub.cards import measured_eval_result

    config = S5DetectionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=128,
                               out_indices=[1, 2, 3, 4], part_features=8, fpn_channels=16, roi_fc_dim=32)
    result = measured_eval_result("dior", 0.1234, "someone/tiny-det", "DIOR-R test split, 4 images")
    text = str(build_model_card(config, "someone/tiny-det", eval_results=[result], results_intro="Measured here."))
    meta = validate_card_text(text)
    assert meta["pipeline_tag"] == "object-detection"
    assert "| DIOR-R | mAP | 12.34 |" in text and "72.95" not in text and "57.20" not in text
    assert "Measured here." in text and 'AutoModelForObjectDetection.from_pretrained("someone/tiny-det")' in text
    assert "| `dior` | airplane, airport," in text
    assert "72.95" not in str(build_model_card(config, "someone/tiny-det"))  # no results: none claimed
