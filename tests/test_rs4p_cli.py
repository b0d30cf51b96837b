"""The RS4P command line (training/select_rs4p.py over rs4p/cli.py) under torchrun with two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "select_rs4p.py"


@pytest.mark.slow
def test_two_processes_select_exactly_like_one(rs4p_workspace, rs4p_reference_run, read_selection, tmp_path):
    """torchrun with 2 CPU processes: the work is split, and the output equals the single-process run."""
    output_dir = tmp_path / "torchrun"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), "--pool", str(rs4p_workspace["pool"]), "--labeled", str(rs4p_workspace["labeled"]),
               "--model", str(rs4p_workspace["model"]), "--output_dir", str(output_dir), "--target_size", "60",
               "--num_clusters", "4", "--batch_size", "8", "--image_size", str(rs4p_workspace["image_size"]),
               "--chunk_size", "25"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "process 0 scored 5 chunks" in log and "process 1 scored 5 chunks" in log, log[-3000:]
    assert read_selection(output_dir) == read_selection(rs4p_reference_run[0])
    for name in ("failures.jsonl", "README.md", "selection_stats.json"):
        assert (output_dir / "dataset" / name).read_text() == (rs4p_reference_run[0] / "dataset" / name).read_text()
