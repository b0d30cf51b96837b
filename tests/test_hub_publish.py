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

