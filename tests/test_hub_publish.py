"""Publishing: folder checks, and publish -> download round trips against the loopback Hub stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from s5_hf import S5ForSemanticSegmentation, S5ImageProcessor
from s5_hf.hub.publish import PublishError, check_dataset_folder, check_model_folder, main, publish_model, remote_code_files

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
CODE = ["configuration_s5.py", "image_processing_s5.py", "label_sets.py", "modeling_s5.py"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_config):
    path = tmp_path_factory.mktemp("publish") / "model"
    torch.manual_seed(0)
    model = S5ForSemanticSegmentation(tiny_config(part_features=8, tasks=["potsdam", "loveda"])).eval()
    model.save_pretrained(path)
    S5ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path, model


@pytest.fixture
def folder(saved, tmp_path):
    """A fresh copy of the saved model folder that a test may damage."""
    copy = tmp_path / "model"
    shutil.copytree(saved[0], copy)
    return copy


def test_a_saved_folder_passes_and_carries_its_code(saved):
    path, _ = saved
    assert remote_code_files(path) == CODE
    model = check_model_folder(path)
    assert model.config.task_names == ["potsdam", "loveda"]


def test_pickled_weights_are_refused(folder):
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(PublishError, match=r"pickled weights \['pytorch_model.bin'\]"):
        check_model_folder(folder)


def test_missing_pieces_are_named(folder):
    (folder / "label_sets.py").unlink()  # imported by configuration_s5.py
    with pytest.raises(PublishError, match="lacks label_sets.py"):
        check_model_folder(folder)


def test_missing_auto_map_or_processor(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PublishError, match="no auto_map"):
        check_model_folder(folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(PublishError, match=r"lacks \['preprocessor_config.json'\]"):
        check_model_folder(folder)


def test_broken_weights_do_not_pass(folder):
    save_file({"nothing": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(PublishError, match=r"do not match the configuration: missing_keys \['classifiers"):
        check_model_folder(folder)


def test_dry_run_renders_the_card_and_lists_the_files(saved):
    result = publish_model(saved[0], "someone/tiny-s5", dry_run=True)
    assert result["commit_url"] is None
    assert sorted(result["files"]) == sorted(["config.json", "model.safetensors", "preprocessor_config.json",
                                              "README.md", *CODE])
    assert 'from_pretrained("someone/tiny-s5")' in result["card"]
    with pytest.raises(PublishError, match="describes"):
        publish_model(saved[0], "someone/tiny-s5", card="s5-vit-b-mdf", dry_run=True)


def test_cli_flags_are_snake_case_and_the_kebab_case_spelling_still_parses():
    from s5_hf.hub.publish import build_parser

    for flag in ("--dry_run", "--dry-run"):
        assert build_parser().parse_args(["model", "folder", "o/r", flag]).dry_run is True
    assert build_parser().parse_args(["model", "folder", "o/r"]).dry_run is False
    help_text = build_parser().format_help()
    assert "--dry_run" in help_text and "--dry-run" not in help_text


def test_rs4p_dataset_repo_option_is_hub_dataset_id_and_hub_model_id_a_deprecated_alias(tmp_path):
    from transformers import HfArgumentParser

    from s5_hf.rs4p.pipeline import SelectionArguments

    parser = HfArgumentParser(SelectionArguments)
    base = ["--pool", "p", "--labeled", "l", "--model", "m", "--output_dir", str(tmp_path), "--push_to_hub"]
    (args,) = parser.parse_args_into_dataclasses(args=[*base, "--hub_dataset_id", "o/rs4p"])
    assert args.hub_dataset_id == "o/rs4p"
    with pytest.warns(FutureWarning, match="use hub_dataset_id"):
        (old,) = parser.parse_args_into_dataclasses(args=[*base, "--hub_model_id", "o/rs4p"])
    assert old.hub_dataset_id == "o/rs4p" and old.hub_model_id is None
    assert "--hub_dataset_id" in parser.format_help() and "--hub_model_id" not in parser.format_help()
    with pytest.raises(ValueError, match="pass --hub_dataset_id only"), pytest.warns(FutureWarning):
        SelectionArguments(pool=["p"], labeled="l", model="m", output_dir="o", hub_dataset_id="a/b", hub_model_id="c/d")
    with pytest.raises(ValueError, match="needs --hub_dataset_id"):
        SelectionArguments(pool=["p"], labeled="l", model="m", output_dir="o", push_to_hub=True)


def tiny_dataset_folder(path):
    from s5_hf.data.shards import to_parquet_shards

    rng = np.random.default_rng(0)
    rows = {
        "image": [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(6)],
        "mask": [Image.fromarray(rng.integers(0, 16, (32, 32), dtype=np.uint8)) for _ in range(6)],
        "id": [f"patch-{i}" for i in range(6)],
        "source": ["millionaid"] * 6,
    }
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "id": datasets.Value("string"), "source": datasets.Value("string")})
    to_parquet_shards(datasets.Dataset.from_dict(rows, features=features), path, min_shards=2, label_set="isaid",
                      card={"pretty_name": "tiny RS4P"})
    return path, rows


def test_dataset_folder_checks(tmp_path):
    path, _ = tiny_dataset_folder(tmp_path / "dataset")
    assert check_dataset_folder(path) == {"train": 4}
    (path / "README.md").unlink()
    with pytest.raises(PublishError, match="no README.md"):
        check_dataset_folder(path)



# ----------------------------------------------------------------------------------------------------------------
# Publish -> download round trips against the loopback Hub stand-in
# ----------------------------------------------------------------------------------------------------------------
# The `hub` fixture (tests/conftest.py) serves a LocalHub of its own for each test.
def test_published_model_loads_back_with_its_card_and_code(saved, hub, tmp_path):
    from huggingface_hub import HfApi, ModelCard
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    path, model = saved
    api = HfApi()
    api.create_repo("local-user/tiny-s5")
    api.upload_file(path_or_fileobj=b"old pickle", path_in_repo="pytorch_model.bin", repo_id="local-user/tiny-s5")
    result = publish_model(path, "local-user/tiny-s5")
    assert result["commit_url"]
    # Safetensors, config, processor, remote code and card; the stale pickled checkpoint is deleted in that commit.
    assert sorted(api.list_repo_files("local-user/tiny-s5")) == sorted(
        [".gitattributes", "README.md", "config.json", "model.safetensors", "preprocessor_config.json", *CODE])
    card = ModelCard.load("local-user/tiny-s5")
    assert card.data.license == "apache-2.0" and "remote-sensing" in card.data.tags
    assert 'from_pretrained("local-user/tiny-s5")' in card.text

    pixels = torch.rand(1, 3, 64, 64)
    loaded = AutoModelForSemanticSegmentation.from_pretrained("local-user/tiny-s5").eval()
    assert AutoImageProcessor.from_pretrained("local-user/tiny-s5").size == {"height": 64, "width": 64}
    with torch.no_grad():
        expected = model(pixels, task="loveda").logits
        torch.testing.assert_close(loaded(pixels, task="loveda").logits, expected)

    # The uploaded code alone, in a process where the installed s5_hf cannot be imported.
    save_file({"pixels": pixels, "expected": expected}, tmp_path / "io.safetensors")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["s5_hf"] = None
        import torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained("local-user/tiny-s5", trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained("local-user/tiny-s5", trust_remote_code=True)
        print("CLASSES", type(model).__module__, type(processor).__name__)
        io = load_file({str(tmp_path / "io.safetensors")!r})
        with torch.no_grad():
            print("MAXDIFF", (model(io["pixels"], task="loveda").logits - io["expected"]).abs().max().item())
    """)
    env = {**hub.env(tmp_path / "fresh_home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    module, processor_class = run.stdout.split("CLASSES")[1].split()[:2]
    assert module.startswith("transformers_modules.") and processor_class == "S5ImageProcessor"
    assert float(run.stdout.split("MAXDIFF")[1]) <= 1e-6


def test_cli_publishes_a_model_and_a_dataset(saved, hub, tmp_path, capsys):
    from huggingface_hub import DatasetCard, HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    assert main(["model", str(saved[0]), "local-user/cli-s5", "--message", "first release"]) == 0
    assert json.loads(capsys.readouterr().out)["commit_url"]
    assert HfApi().list_repo_commits("local-user/cli-s5")[0].title == "first release"

    path, rows = tiny_dataset_folder(tmp_path / "dataset")
    assert main(["dataset", str(path), "local-user/tiny-rs4p"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == ["train"]
    assert DatasetCard.load("local-user/tiny-rs4p", repo_type="dataset").data.pretty_name == "tiny RS4P"
    streamed = datasets.load_dataset("local-user/tiny-rs4p", split="train", streaming=True)
    assert sorted(row["id"] for row in streamed) == rows["id"]

    with pytest.raises(SystemExit):  # a dataset carries its own card
        main(["dataset", str(path), "local-user/tiny-rs4p", "--card", "s5-vit-b-mdf"])
    (path / "README.md").unlink()
    assert main(["dataset", str(path), "local-user/broken"]) == 1
    assert "no README.md" in capsys.readouterr().err
    with pytest.raises(RepositoryNotFoundError):  # checked before anything was created
        HfApi().dataset_info("local-user/broken")


def test_republishing_a_dataset_replaces_its_shards(hub, tmp_path):
    from huggingface_hub import HfApi

    from s5_hf.data.shards import to_parquet_shards
    from s5_hf.hub.publish import publish_dataset

    path, rows = tiny_dataset_folder(tmp_path / "dataset")  # 2 shards
    publish_dataset(path, "local-user/shards")
    # Re-exported with fewer rows in 3 shards: the 2 earlier shards must not stay behind as data.
    smaller = datasets.Dataset.from_dict({k: v[:3] for k, v in rows.items()},
                                         features=datasets.load_dataset(str(path), split="train").features)
    to_parquet_shards(smaller, path, min_shards=3, label_set="isaid", card={"pretty_name": "tiny RS4P"},
                      overwrite=True)
    publish_dataset(path, "local-user/shards")
    shards = [f for f in HfApi().list_repo_files("local-user/shards", repo_type="dataset") if f.endswith(".parquet")]
    assert len(shards) == 3 and all(f.endswith("-of-00003.parquet") for f in shards)
    streamed = datasets.load_dataset("local-user/shards", split="train", streaming=True)
    assert sorted(row["id"] for row in streamed) == rows["id"][:3]



# ----------------------------------------------------------------------------------------------------------------
# RS4P --push_to_hub goes through publish_dataset: a second push replaces the first one's shards
# ----------------------------------------------------------------------------------------------------------------
def test_rs4p_push_replaces_the_shards_of_an_earlier_push(hub, tmp_path):
    from types import SimpleNamespace

    from accelerate import PartialState
    from huggingface_hub import HfApi

    from s5_hf.data.shards import to_parquet_shards
    from s5_hf.rs4p.pipeline import _push

    PartialState()  # the pipeline logs through accelerate
    args = SimpleNamespace(hub_dataset_id="local-user/rs4p-twice", hub_private=False)
    path, rows = tiny_dataset_folder(tmp_path / "dataset")  # 2 shards
    _push(args, path)
    assert len([f for f in HfApi().list_repo_files(args.hub_dataset_id, repo_type="dataset")
                if f.endswith(".parquet")]) == 2
    # A new selection (other rows) in 3 shards.
    features = datasets.load_dataset(str(path), split="train").features
    new = {**rows, "id": [f"new-{i}" for i in range(6)]}
    to_parquet_shards(datasets.Dataset.from_dict(new, features=features), path, min_shards=3, label_set="isaid",
                      card={"pretty_name": "tiny RS4P"}, overwrite=True)
    _push(args, path)
    shards = sorted(f for f in HfApi().list_repo_files(args.hub_dataset_id, repo_type="dataset")
                    if f.endswith(".parquet"))
    assert shards == sorted(p.relative_to(path).as_posix() for p in path.rglob("*.parquet")) and len(shards) == 3
    assert (path / ".s5-manifest.json").is_file()  # local bookkeeping, kept off the Hub
    assert not [f for f in HfApi().list_repo_files(args.hub_dataset_id, repo_type="dataset")
                if Path(f).name.startswith(".") and f != ".gitattributes"]
    streamed = [row["id"] for row in datasets.load_dataset(args.hub_dataset_id, split="train", streaming=True)]
    assert sorted(streamed) == new["id"]  # the new rows, each once


# ----------------------------------------------------------------------------------------------------------------
# LoRA-trained models: the adapters are checked, uploaded and described by the card
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_saved(tmp_path_factory, tiny_config):
    from s5_hf.training.lora import add_lora_adapters

    torch.manual_seed(0)
    config = tiny_config(part_features=0, tasks=["potsdam", "loveda"])
    model = add_lora_adapters(S5ForSemanticSegmentation(config), r=4)
    with torch.no_grad():  # trained adapters are not the identity (lora_B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.2)
    model.eval()
    path = tmp_path_factory.mktemp("lora-publish") / "model"
    model.save_pretrained(path)
    S5ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path, model


@pytest.fixture
def lora_folder(lora_saved, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(lora_saved[0], copy)
    return copy


LORA_FILES = [f"lora/{task}/{name}" for task in ("loveda", "potsdam")
              for name in ("adapter_config.json", "adapter_model.safetensors")]


def test_lora_model_is_published_with_its_adapters(lora_saved, hub, tmp_path):
    from huggingface_hub import HfApi, ModelCard, snapshot_download
    from peft import PeftModel

    from s5_hf.training.lora import S5LoRAModel
    from s5_hf.training.loop import _publish

    path, model = lora_saved
    folder = tmp_path / "run" / "model"
    shutil.copytree(path, folder)
    result = SimpleResult("loveda", 0.5, split="test")
    assert _publish(folder, "local-user/lora-s5", stage="mdf", results=[result], run_summary="Measured with the "
                    "adapters.", private=False)
    files = HfApi().list_repo_files("local-user/lora-s5")
    assert set(LORA_FILES) <= set(files) and "model.safetensors" in files
    card = ModelCard.load("local-user/lora-s5")
    assert "## LoRA adapters" in card.text and "`lora/potsdam/`" in card.text and "lora" in card.data.tags
    assert [(r.dataset_name, r.dataset_split, r.metric_value) for r in card.data.eval_results] == [("LoveDA", "test", 50.0)]

    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixels, task="loveda").logits
        loaded = S5LoRAModel.from_pretrained(snapshot_download("local-user/lora-s5"))
        torch.testing.assert_close(loaded(pixels, task="loveda").logits, expected)
        # The card's PEFT-only route: base model from the repo, the adapter from its subfolder.
        base = S5ForSemanticSegmentation.from_pretrained("local-user/lora-s5").eval()
        without = base(pixels, task="loveda").logits
        peft_model = PeftModel.from_pretrained(base, "local-user/lora-s5", subfolder="lora/loveda",
                                               adapter_name="loveda").eval()
        torch.testing.assert_close(peft_model(pixels, task="loveda").logits, expected)
    assert (without - expected).abs().max() > 1e-3  # the adapters matter: without them the results do not hold

    # Published again without adapters (a plain model): the earlier adapters are deleted, not left to load.
    shutil.rmtree(folder / "lora")
    publish_model(folder, "local-user/lora-s5")
    assert not [f for f in HfApi().list_repo_files("local-user/lora-s5") if f.startswith("lora/")]


class SimpleResult:
    """What train_loop._publish reads of an evaluation result."""

    def __init__(self, task: str, value: float, split: str | None = None):
        from types import SimpleNamespace

        self.task, self.reported, self.split = task, value, split
        self.protocol = SimpleNamespace(metric="mean_iou")


def test_lora_adapters_are_checked(lora_folder):
    result = publish_model(lora_folder, "someone/lora", dry_run=True)
    assert set(LORA_FILES) <= set(result["files"]) and "lora/README.md" not in result["files"]
    assert "## LoRA adapters" in result["card"]
    card = lora_folder.parent / "card.md"
    card.write_text(publish_model(lora_folder, "someone/lora", dry_run=True)["card"].replace("lora/", "adapters/"))
    with pytest.raises(PublishError, match=r"LoRA adapters \(potsdam, loveda\) but the given card does not mention"):
        publish_model(lora_folder, "someone/lora", card=str(card), dry_run=True)
    shutil.rmtree(lora_folder / "lora" / "potsdam")
    with pytest.raises(PublishError, match=r"adapters \['loveda'\] but the model's tasks are \['potsdam', 'loveda'\]"):
        publish_model(lora_folder, "someone/lora", dry_run=True)


def test_lora_adapters_that_do_not_fit_are_refused(lora_folder):
    adapter = lora_folder / "lora" / "loveda" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    weights = {k: torch.zeros(v.shape[0], v.shape[1] + 1) if "lora_A" in k else v for k, v in load_file(adapter).items()}
    save_file(weights, adapter)
    with pytest.raises(PublishError, match="LoRA adapters do not load and run"):
        publish_model(lora_folder, "someone/lora", dry_run=True)


def test_training_publish_refuses_adapters_left_beside_the_model(lora_folder, hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from s5_hf.training.loop import _publish

    (lora_folder / "lora").rename(lora_folder.parent / "lora")
    with pytest.raises(PublishError, match="published without the adapters"):
        _publish(lora_folder, "local-user/lora-beside", stage="mdf", results=[], run_summary="", private=False)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("local-user/lora-beside")


# ----------------------------------------------------------------------------------------------------------------
# A released model's card only for the converted official weights
# ----------------------------------------------------------------------------------------------------------------
_TESTS = Path(__file__).resolve().parent
GOLDEN = _TESTS / "data" / "golden" / "official-small"  # the official test vectors (tests/data/README.md)


@pytest.fixture
def tiny_release(monkeypatch, tmp_path):
    """The golden official MDF checkpoint (tiny) converted, standing in for the released s5-vit-b-mdf model."""
    from s5_hf.hub import publish as hub_module
    from s5_hf.convert_official import convert_official_checkpoint
    from s5_hf.hub.cards import ReleasedModel

    converted = tmp_path / "converted"
    model = convert_official_checkpoint(GOLDEN / "mdf_official_state_dict.safetensors", converted,
                                        num_attention_heads=2, out_indices=[1, 2, 3, 4])
    config = model.config

    class TinyRelease(ReleasedModel):
        def config(self):
            return config

    release = TinyRelease("vit-b", "mdf")
    monkeypatch.setattr(hub_module, "RELEASED_MODELS", [release])
    return converted, release


@pytest.mark.slow
def test_released_card_needs_the_converted_official_weights(tiny_release, tmp_path):
    from s5_hf.convert_official import CONVERSION_RECORD, weights_sha256

    converted, release = tiny_release
    result = publish_model(converted, "s5/s5-vit-b-mdf", card="s5-vit-b-mdf", dry_run=True)
    assert "official checkpoint converted" in result["card"] and weights_sha256(converted) in result["card"]
    assert CONVERSION_RECORD in result["files"]

    # A random model of the same shape: same architecture, not the official weights.
    random_folder = tmp_path / "random"
    torch.manual_seed(1)
    S5ForSemanticSegmentation(release.config()).save_pretrained(random_folder)
    S5ImageProcessor().save_pretrained(random_folder)
    with pytest.raises(PublishError, match=r"has no official_conversion.json.*not converted official weights"):
        publish_model(random_folder, "s5/s5-vit-b-mdf", card="s5-vit-b-mdf", dry_run=True)
    assert publish_model(random_folder, "s5/random", dry_run=True)["card"]  # its own card is fine
    # ... with the converted folder's record copied beside it: the digest does not match.
    shutil.copy(converted / CONVERSION_RECORD, random_folder / CONVERSION_RECORD)
    with pytest.raises(PublishError, match="are not those official_conversion.json records"):
        publish_model(random_folder, "s5/s5-vit-b-mdf", card="s5-vit-b-mdf", dry_run=True)
    # ... or with the released card given as a Markdown file (as in model_cards/).
    card_file = tmp_path / "s5-vit-b-mdf.md"
    card_file.write_text(result["card"])
    with pytest.raises(PublishError, match="are not those official_conversion.json records"):
        publish_model(random_folder, "s5/s5-vit-b-mdf", card=str(card_file), dry_run=True)
    (random_folder / CONVERSION_RECORD).unlink()
    with pytest.raises(PublishError, match="has no official_conversion.json"):
        publish_model(random_folder, "s5/s5-vit-b-mdf", card=str(card_file), dry_run=True)
    assert publish_model(converted, "s5/s5-vit-b-mdf", card=str(card_file), dry_run=True)["card"]


def test_released_card_with_a_pinned_digest(tiny_release, monkeypatch):
    import dataclasses

    from s5_hf.hub import publish as hub_module

    converted, release = tiny_release
    pinned = dataclasses.replace(release, weights_sha256="0" * 64)
    monkeypatch.setattr(hub_module, "RELEASED_MODELS", [pinned])
    with pytest.raises(PublishError, match="whose converted weights have digest 0000"):
        publish_model(converted, "s5/s5-vit-b-mdf", card="s5-vit-b-mdf", dry_run=True)


# ----------------------------------------------------------------------------------------------------------------
# Oriented detectors go through the same publishing path
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detection_saved(tmp_path_factory):
    from s5_hf import S5DetectionConfig, S5DetectionImageProcessor, S5ForOrientedDetection

    torch.manual_seed(0)
    config = S5DetectionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=128,
                               out_indices=[1, 2, 3, 4], part_features=8, fpn_channels=16, roi_fc_dim=32)
    path = tmp_path_factory.mktemp("detection-publish") / "model"
    S5ForOrientedDetection(config).save_pretrained(path)
    S5DetectionImageProcessor(size={"height": 128, "width": 128}).save_pretrained(path)
    return path, config


def test_detection_folder_is_checked_and_carded_by_publish_model(detection_saved, tmp_path):
    path, _ = detection_saved
    model = check_model_folder(path)
    assert type(model).__name__ == "S5ForOrientedDetection"
    result = publish_model(path, "someone/tiny-det", dry_run=True)
    assert "modeling_s5_detection.py" in result["files"] and "model.safetensors" in result["files"]
    assert "pipeline_tag: object-detection" in result["card"] and "model-index" not in result["card"]
    with pytest.raises(PublishError, match="describes"):  # a segmentation card for a detector
        publish_model(path, "someone/tiny-det", card="s5-vit-b-mdf", dry_run=True)
    folder = tmp_path / "det"
    shutil.copytree(path, folder)
    (folder / "lora" / "dior").mkdir(parents=True)
    with pytest.raises(PublishError, match="segmentation models only"):
        publish_model(folder, "someone/tiny-det", dry_run=True)


def test_released_detection_card_only_for_the_converted_official_weights(detection_saved, tmp_path, monkeypatch):
    from s5_hf.convert_official import CONVERSION_RECORD, weights_sha256
    from s5_hf.hub import publish as hub_module
    from s5_hf.hub.cards import ReleasedModel

    path, config = detection_saved

    class TinyRelease(ReleasedModel):
        def config(self):
            return config

    monkeypatch.setattr(hub_module, "RELEASED_MODELS", [TinyRelease("vit-b", "detection")])
    folder = tmp_path / "det"
    shutil.copytree(path, folder)
    with pytest.raises(PublishError, match="not converted official weights"):
        publish_model(folder, "s5/s5-vit-b-detection", card="s5-vit-b-detection", dry_run=True)
    (folder / CONVERSION_RECORD).write_text(json.dumps({"weights_sha256": weights_sha256(folder)}))
    card = publish_model(folder, "s5/s5-vit-b-detection", card="s5-vit-b-detection", dry_run=True)["card"]
    assert "value: 72.95" in card and "value: 57.2" in card and "official checkpoint converted" in card
