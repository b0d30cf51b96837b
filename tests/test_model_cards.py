"""Model cards: the committed cards equal a fresh render, their metadata is valid, their facts come from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from s5_hf import S5Config
from s5_hf.hub.cards import (
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
    return {model.name: str(released_card(model)) + "\n" for model in RELEASED_MODELS}


def test_committed_cards_equal_a_fresh_render(rendered):
    committed = {p.stem: p.read_text() for p in CARDS.glob("s5-*.md")}
    assert sorted(committed) == sorted(rendered), "run: python -m s5_hf.hub.cards --out model_cards/"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name}.md is stale; run: python -m s5_hf.hub.cards --out model_cards/"


def test_check_mode_detects_stale_cards(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    card = tmp_path / "s5-vit-l-mdf.md"
    card.write_text(card.read_text().replace("80.72", "80.73"))
    assert main(["--out", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("model", RELEASED_MODELS, ids=lambda m: m.name)
def test_card_metadata_is_valid(model, rendered):
    text = rendered[model.name]
    meta = validate_card_text(text)
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-segmentation" and meta["library_name"] == "transformers"
    assert {"remote-sensing", "semantic-segmentation", "earth-observation", "vision-transformer"} <= set(meta["tags"])
    # The card also loads through huggingface_hub, which parses model-index into EvalResults.
    card = ModelCard(text)
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


@pytest.mark.parametrize("model", RELEASED_MODELS, ids=lambda m: m.name)
def test_card_facts_come_from_the_configuration(model, rendered):
    text = rendered[model.name]
    variant = "single" if model.stage == "s4p" else "multiple"
    assert f"{count_parameters(model.preset, variant):,}" in text
    config = model.config()
    for spec in config.tasks:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{spec['name']}` |"))
        for name in spec["id2label"].values():
            assert name.replace("_", " ") in row
    assert "arXiv:2508.12409" in text and "@inproceedings" in text
    assert "set_default_task" in text and 'pipeline("image-segmentation"' in text and "task=" in text


def test_card_for_a_trained_folder_claims_no_results():
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, part_features=0,
                      tasks=["loveda", {"name": "roofs", "id2label": {0: "flat", 1: "pitched"}}])
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



def test_released_card_states_the_weights_digest_and_a_lora_card_its_adapters():
    model = next(m for m in RELEASED_MODELS if m.name == "s5-vit-b-mdf")
    digest = "ab" * 32
    text = str(released_card(model, weights_sha256=digest))
    validate_card_text(text)
    assert f"`{digest}`" in text and "official_conversion.json" in text
    assert digest not in str(released_card(model))  # the committed cards carry none until a digest is pinned
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, part_features=0, tasks=["potsdam", "loveda"])
    text = str(build_model_card(config, "someone/lora-s5", lora_adapters=["potsdam", "loveda"]))
    meta = validate_card_text(text)
    assert {"lora", "peft"} <= set(meta["tags"]) and "## LoRA adapters" in text
    assert "`lora/potsdam/`, `lora/loveda/`" in text and 'subfolder="lora/potsdam"' in text
    assert "## LoRA adapters" not in str(build_model_card(config, "someone/plain-s5"))
