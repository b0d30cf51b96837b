"""The README's main job, at its smallest: every stage runs and writes what the README says it writes."""

from __future__ import annotations

import json

import datasets
from PIL import Image

from s5_hf import quickstart
from s5_hf.label_sets import MDF_TASKS


def test_quickstart_runs_every_stage(tmp_path):
    out = tmp_path / "quickstart"
    summary = quickstart.main(["--output-dir", str(out), "--steps", "2"])

    table = (out / "results.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == list(MDF_TASKS)
    assert set(summary["results"]) == set(MDF_TASKS)
    for task in MDF_TASKS:
        assert 0.0 <= summary["results"][task]["mIoU"] <= 1.0
        with Image.open(out / f"overlay_{task}.png") as overlay, Image.open(out / f"mask_{task}.png") as mask:
            assert overlay.width > mask.width and mask.size == (1249, 1035)  # the scene plus its legend
    selection = datasets.load_dataset(summary["rs4p_dataset"], split="train", streaming=True)
    rows = list(selection)
    # Clusters with too few candidates stay short of their quota (no top-up, as the paper).
    assert 0 < len(rows) <= 96 and {"image", "mask", "entropy", "cluster"} <= set(rows[0])
    assert json.loads((out / "summary.json").read_text())["mdf_model"] == str(out / "mdf" / "model")
    # Two steps log one point per stage, which makes no curve; the default 60 steps draw all three.
    assert summary["curves"] == []
