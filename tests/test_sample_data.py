"""What the package ships for users to start from: the labeled NEON tree-crown sample (a `LabeledFolder`), and the
demo's Hugging Face Space folder built by demo/build_space.py with its own copy of the package."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_build_space():
    spec = importlib.util.spec_from_file_location("s5_build_space", REPO / "demo" / "build_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the Space folder ------------------------------------------------------------------------------------------
def test_space_requirements_pin_every_dependency_and_not_s5_hf():
    from packaging.requirements import Requirement

    lines = [line for line in (REPO / "demo" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pins = dict(line.split("==", 1) for line in lines if "==" in line)
    assert "s5-hf" not in pins and not any(line.startswith("s5-hf") for line in lines)
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["geo"]:
        requirement = Requirement(text)
        assert requirement.name in pins, f"{requirement.name} is not pinned in demo/requirements.txt"
        assert requirement.specifier.contains(pins[requirement.name], prereleases=True), (text, pins[requirement.name])
    sdk = re.search(r"^sdk_version:\s*(\S+)", (REPO / "demo" / "README.md").read_text(), re.MULTILINE)[1]
    assert pins["gradio"] == sdk


def test_built_space_imports_its_own_copy_of_the_package(tmp_path):
    build = load_build_space()
    space = build.build_space(tmp_path / "space")
    assert {p.name for p in space.iterdir()} >= {"app.py", "README.md", "requirements.txt", "s5_hf"}
    assert (space / "requirements.txt").read_text() == (REPO / "demo" / "requirements.txt").read_text()
    assert (space / "s5_hf" / "sample_data" / "neon_labeled" / "id2label.json").is_file()
    assert not list(space.rglob("__pycache__"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        build.build_space(space)
    # The Space runs `python app.py` in its folder: s5_hf must come from the copy, not from an installed package.
    check = (
        "import json, runpy, s5_hf\n"
        "app = runpy.run_path('app.py', run_name='space_check')\n"
        "print(json.dumps({'package': s5_hf.__file__, 'samples': str(app['sample_data'].ROOT),\n"
        "                  'examples': [str(app['sample_data'].path(n)) for n in app['EXAMPLES']]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run([sys.executable, "-c", check], cwd=space, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve() == (space / "s5_hf" / "__init__.py").resolve()
    assert Path(found["samples"]).resolve().is_relative_to(space.resolve())
    assert all(Path(p).resolve().is_relative_to(space.resolve()) for p in found["examples"])


# ---- the labeled NEON sample -----------------------------------------------------------------------------------
SAMPLE = REPO / "s5_hf" / "sample_data" / "neon_labeled"


def test_neon_sample_is_a_labeled_folder_with_two_classes():
    from s5_hf.data.folders import LabeledFolder

    folder = LabeledFolder(SAMPLE, "trees", validation_split=0.25)
    assert folder.id2label == {0: "background", 1: "tree_crown"}
    info = folder.check()
    assert (info.bands, info.dtype) == (3, "uint8")
    assert len(folder.pairs("train")) == 3 and len(folder.pairs("val")) == 1
    rows = list(folder.load("train+val"))
    assert sorted(r["id"] for r in rows) == ["OSBS_029_x0_y0", "OSBS_029_x200_y200", "SOAP_061_x0_y200",
                                             "SOAP_061_x200_y0"]
    for row in rows:
        assert row["image"].size == (200, 200) and row["image"].mode == "RGB"
        mask = np.asarray(row["mask"])
        assert mask.shape == (200, 200) and set(np.unique(mask)) == {0, 1}
        assert 0.05 < (mask == 1).mean() < 0.8  # crowns and background both present
    # Small enough to ship: the whole sample is under 500 KB.
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 500_000
    license_text = (SAMPLE / "LICENSE").read_text()
    assert "public domain" in license_text and "MIT License" in license_text
    assert "deepforest" in (SAMPLE / "README.md").read_text()


def test_neon_sample_matches_the_bundled_osbs_tile_and_its_crown_boxes():
    # Provenance check against the package's own copy of the source tile and its annotations.
    import csv

    from PIL import Image, ImageDraw

    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(REPO / "s5_hf" / "sample_data" / "OSBS_029.tif") as src:
        tile = src.read([1, 2, 3]).transpose(1, 2, 0)
    with open(REPO / "s5_hf" / "sample_data" / "OSBS_029.csv", newline="") as handle:
        boxes = [tuple(int(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")) for row in csv.DictReader(handle)]
    crowns = Image.new("L", (400, 400), 0)
    draw = ImageDraw.Draw(crowns)
    for xmin, ymin, xmax, ymax in boxes:
        draw.ellipse((xmin, ymin, xmax - 1, ymax - 1), fill=1)
    crowns = np.asarray(crowns)
    for left, top in ((0, 0), (200, 200)):
        stem = f"OSBS_029_x{left}_y{top}.png"
        window = (slice(top, top + 200), slice(left, left + 200))
        np.testing.assert_array_equal(np.asarray(Image.open(SAMPLE / "images" / stem)), tile[window])
        np.testing.assert_array_equal(np.asarray(Image.open(SAMPLE / "masks" / stem)), crowns[window])


@pytest.mark.slow
def test_fine_tune_on_the_neon_sample_then_segment_a_scene(tmp_path, tiny_config):
    """The README's "Fine-tune on your own data" path, end to end at toy size: a new head "trees" trained on the
    real sample with a held-out quarter, saved with its processor, then a bundled scene segmented with it."""
    from PIL import Image

    from s5_hf import S5ForSemanticSegmentation, sample_data
    from s5_hf.inference import segment_file
    from s5_hf.training import mdf

    start = tmp_path / "tiny-s4p"
    S5ForSemanticSegmentation(tiny_config(tasks=["isaid"], drop_path_rate=0.0)).save_pretrained(start)
    outcome = mdf.main(["--model_name_or_path", str(start), "--train_datasets", f"trees={sample_data.LABELED}",
                        "--validation_split", "trees=0.25", "--crop_size", "64", "--batch_size", "2",
                        "--learning_rate", "1e-3", "--max_train_steps", "2", "--eval_steps", "2",
                        "--output_dir", str(tmp_path / "trees")])
    result = outcome["results"]["trees"]
    assert result.split == "val" and result.num_samples == 1 and 0 <= result.scores.mean_iou <= 1
    model = S5ForSemanticSegmentation.from_pretrained(tmp_path / "trees" / "model")
    assert model.config.get_task("trees").class_names == ["background", "tree_crown"]
    written = segment_file(model, sample_data.path("SOAP_031.png"), tmp_path / "trees.png", window=64)
    labels = np.array(Image.open(written.mask))
    assert labels.shape == (400, 400) and set(np.unique(labels)) <= {0, 1}
