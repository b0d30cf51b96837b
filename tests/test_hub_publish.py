"""Publishing: folder checks, and publish -> download round trips against the loopback Hub stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from s5_hf import S5Config, S5ForSemanticSegmentation, S5ImageProcessor
from s5_hf.hub import PublishError, check_dataset_folder, check_model_folder, main, publish_model, remote_code_files

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
CODE = ["configuration_s5.py", "image_processing_s5.py", "label_sets.py", "modeling_s5.py"]


def tiny_model(tasks=("potsdam", "loveda")) -> S5ForSemanticSegmentation:
    torch.manual_seed(0)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, part_features=8, tasks=list(tasks))
    return S5ForSemanticSegmentation(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("publish") / "model"
    model = tiny_model()
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
@pytest.fixture
def hub(tmp_path, monkeypatch):
    from s5_hf.testing import LocalHub

    with LocalHub(tmp_path / "hub") as hub:
        hub.patch_env(monkeypatch, tmp_path / "hf_home")
        yield hub
        assert hub.blocked == [] and hub.unhandled == []  # nothing tried another host or an unknown route


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
    from s5_hf.hub import publish_dataset

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
