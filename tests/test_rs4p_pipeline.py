"""RS4P whole runs (rs4p/pipeline.py, with export.py and report.py): the selection, its dataset and card,
resume after a kill or a failure, mixed thread counts, precision fallback, push to the Hub, Parquet pools."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from s5_hf.files import temporary_sibling
from s5_hf.rs4p import foreground_entropy, open_pool, run_selection

# Runs a selection and SIGKILLs itself (no cleanup, no finally blocks) at a given point: in the middle of
# writing the (N+1)-th score shard, leaving half of it under its temporary name, or after N rows of the
# output dataset.
KILLER = r"""
import json, os, signal, sys
import s5_hf.data.shards as shards
import s5_hf.rs4p.scoring as scoring
from s5_hf.files import temporary_sibling
from s5_hf.rs4p import SelectionArguments, run_selection

stage, after, arguments = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
calls = [0]

def die_after(owner, name, before_death=None):
    original = getattr(owner, name)
    def wrapper(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            if before_death is not None:
                before_death(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    setattr(owner, name, wrapper)

def half_a_shard(store, index, table):
    store.directory.mkdir(parents=True, exist_ok=True)
    temporary_sibling(store.path(index)).write_bytes(b"PAR1" + bytes(64))

if stage == "scoring":
    die_after(scoring.ScoreStore, "write", half_a_shard)
else:
    die_after(shards._RollingWriter, "add")
run_selection(SelectionArguments(**arguments))
sys.exit("the run was not killed")
"""


def test_run_selects_scores_and_reports(rs4p_workspace, rs4p_reference_run, read_selection, rs4p_model, tmp_path):
    output_dir, outcome = rs4p_reference_run
    size, sources = rs4p_workspace["image_size"], rs4p_workspace["sources"]
    assert outcome.complete and outcome.chunks_scored == outcome.chunks_total == 10  # 8 pool + 2 labeled chunks
    selection, rows = read_selection(output_dir)
    stats = outcome.stats
    assert len(selection) == len(rows) == stats.num_selected == 60
    # ranking: ascending entropy along the rank; quotas never exceeded
    entropies = [r["entropy"] for r in selection]
    assert entropies == sorted(entropies) and [r["rank"] for r in selection] == list(range(60))
    for cluster in stats.quota_table:
        assert cluster["accepted"] <= cluster["quota"]
    assert sum(c["quota"] for c in stats.quota_table) == 60
    # the two corrupt files, the images that are not 8-bit RGB and the constant one are reported with their
    # reason, counted and listed, never scored (read as 8 bits, they would be dark and win the ranking)
    lines = (output_dir / "dataset" / "failures.jsonl").read_text().splitlines()
    failures = {f["id"]: f for f in map(json.loads, lines)}
    assert sorted(failures) == sorted(["samrs/broken.png", "samrs/truncated.jpg", *rs4p_workspace["unusable"]])
    assert failures["samrs/broken.png"]["reason"].startswith("cannot decode image: UnidentifiedImageError")
    for image_id, reason in rs4p_workspace["unusable"].items():
        assert failures[image_id]["reason"].startswith(reason), failures[image_id]
        assert failures[image_id]["source"] == image_id.split("/")[0]
    on_disk = {s: sum(1 for f in (rs4p_workspace["pool"] / s).iterdir() if f.suffix != ".txt") for s in sources}
    failed = {s: sum(f["source"] == s for f in failures.values()) for s in sources}
    assert failed == {"millionaid": 1, "samrs": 2, "star": 5}
    for source in sources:
        assert stats.per_source[source] == {"scored": on_disk[source] - failed[source], "failed": failed[source],
                                            "selected": sum(r["source"] == source for r in rows)}
    assert stats.num_scored == sum(on_disk.values()) - 8 and stats.num_failed == 8
    card = (output_dir / "dataset" / "README.md").read_text()
    assert f"| samrs | {on_disk['samrs'] - 2} | 2 | {stats.per_source['samrs']['selected']} |" in card
    assert "entropy_histogram.png" in card and "quota B_m" in card and "failures.jsonl" in card
    assert Image.open(output_dir / "dataset" / "entropy_histogram.png").size == (900, 420)
    assert sum(stats.class_share.values()) == pytest.approx(1.0)

    # the dataset loads with `datasets`; masks are the model's argmax and entropies its foreground entropy
    loaded = datasets.load_dataset(str(output_dir / "dataset"), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == 60 and set(loaded.column_names) >= {"image", "mask", "id", "source", "entropy", "rank"}
    model = rs4p_model()
    for row in (loaded[0], loaded[len(loaded) - 1]):
        pixels = torch.from_numpy(np.array(row["image"].convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = model(pixels).logits
        assert np.array_equal(np.asarray(row["mask"]), logits[0].argmax(dim=0).numpy())
        assert row["entropy"] == pytest.approx(foreground_entropy(logits, 0).item(), rel=1e-5)
    # off-size originals (48 px) are stored resized, so image and mask always align
    assert all(Image.open(io.BytesIO(r["image"]["bytes"])).size == (size, size) for r in rows)


def test_killed_run_resumes_to_the_same_output(rs4p_reference_run, selection_arguments, read_selection, tmp_path):
    output_dir = tmp_path / "resumed"
    first = run_selection(selection_arguments(output_dir, max_chunks=3))
    assert not first.complete and first.chunks_scored == 3 and first.missing_chunks == 7
    assert not (output_dir / "dataset").exists()
    # a run killed while writing leaves a temporary file behind; it is cleaned up, never read
    temporary_sibling(output_dir / "scores" / "pool" / "chunk-000007.parquet").write_bytes(b"partial")
    second = run_selection(selection_arguments(output_dir))
    assert second.complete and second.chunks_reused == 3 and second.chunks_scored == 7
    assert json.loads((output_dir / "run_stats.json").read_text())["chunks_scored"] == 7
    assert not list((output_dir / "scores" / "pool").glob(".*tmp*"))
    assert read_selection(output_dir) == read_selection(rs4p_reference_run[0])
    # a third run re-scores nothing and writes the same dataset again
    third = run_selection(selection_arguments(output_dir))
    assert third.chunks_scored == 0 and read_selection(output_dir) == read_selection(rs4p_reference_run[0])


def test_failed_rewrite_keeps_the_previous_outputs(rs4p_reference_run, selection_arguments, tmp_path, monkeypatch):
    """A run that dies while writing selection.parquet (here: the disk fills up) leaves the previous
    selection and dataset as they were, and no temporary files."""
    output_dir = tmp_path / "again"
    shutil.copytree(rs4p_reference_run[0], output_dir)
    before = {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}

    def disk_full(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1" + bytes(16))  # what a writer leaves when it stops half-way
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_selection(selection_arguments(output_dir))
    after = {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before if name not in ("run_stats.json", "run_config.json"))


@pytest.mark.slow
def test_sigkilled_runs_resume_to_the_same_output(rs4p_reference_run, selection_arguments, read_selection, tmp_path):
    """Real kills (SIGKILL, no clean-up): one while a score shard is half written, the resumed run while the
    output dataset is half written; the next run scores nothing again and writes the reference output."""
    output_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    args = json.dumps(asdict(selection_arguments(output_dir)))
    pool_scores = output_dir / "scores" / "pool"

    def run_until_killed(stage: str, after: int) -> None:
        result = subprocess.run([sys.executable, "-c", KILLER, stage, str(after), args], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]

    run_until_killed("scoring", 4)  # 2 labeled + 2 pool shards written, the 5th half written
    assert len(list(pool_scores.glob("chunk-*.parquet"))) == 2 and len(list(pool_scores.glob(".chunk-*.tmp"))) == 1
    run_until_killed("export", 30)  # resumes, scores the other 6 chunks, dies half-way through the dataset
    assert json.loads((output_dir / "run_stats.json").read_text())["chunks_reused"] == 4
    assert len(list(output_dir.glob(".dataset.*.partial"))) == 1 and not (output_dir / "dataset").exists()
    outcome = run_selection(selection_arguments(output_dir))
    assert outcome.complete and outcome.chunks_scored == 0 and outcome.chunks_reused == 10
    assert read_selection(output_dir) == read_selection(rs4p_reference_run[0])
    assert not list(output_dir.rglob("*.partial")) and not list(output_dir.rglob("*.tmp*"))
    for name in ("failures.jsonl", "README.md", "selection_stats.json"):
        assert (output_dir / "dataset" / name).read_text() == (rs4p_reference_run[0] / "dataset" / name).read_text()


def test_mixed_thread_counts_are_recorded_and_keep_the_selection(rs4p_reference_run, selection_arguments,
                                                                 read_selection, tmp_path, caplog):
    """Shards scored with 1 and with 2 intra-op threads differ in the last bits: the run warns, the card
    records both environments, and the selected ids stay those of the reference run."""
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("needs 2 intra-op threads")
    output_dir = tmp_path / "mixed"
    torch.set_num_threads(1)
    try:
        run_selection(selection_arguments(output_dir, max_chunks=5))
    finally:
        torch.set_num_threads(threads)
    with caplog.at_level("WARNING"):
        outcome = run_selection(selection_arguments(output_dir))
    assert "2 different numeric environments" in caplog.text
    recorded = outcome.stats.parameters["scoring_environment"]
    assert "intra-op threads: 1, float32 (5 shards)" in recorded
    assert f"intra-op threads: {threads}, float32 (5 shards)" in recorded
    selection, reference = read_selection(output_dir)[0], read_selection(rs4p_reference_run[0])[0]
    assert [r["id"] for r in selection] == [r["id"] for r in reference]
    assert [r["entropy"] for r in selection] == pytest.approx([r["entropy"] for r in reference], rel=1e-6)


def test_bf16_without_native_support_falls_back_before_scoring(selection_arguments, tmp_path, monkeypatch):
    """RS4P --dtype bfloat16 on a CPU without AVX-512 BF16/AMX (where it runs ~500x slower) warns with the
    measured factor and scores in float32; the check comes first, before anything is read or written."""
    from s5_hf import precision

    monkeypatch.setattr(precision, "cpu_features", lambda: {"avx2", "fma"})
    (tmp_path / "empty" / "millionaid").mkdir(parents=True)
    with pytest.warns(precision.PrecisionWarning, match="(?i)float32"):
        with pytest.raises(ValueError, match="The pool holds no images"):
            run_selection(selection_arguments(tmp_path / "run", pool=[str(tmp_path / "empty")], dtype="bfloat16"))


def test_push_to_hub_twice_then_load_dataset_streaming(rs4p_workspace, rs4p_reference_run, selection_arguments,
                                                       read_selection, tmp_path, hub):
    """--push_to_hub uploads the dataset folder; pushed again with another shard count, the repo holds only the
    second push's shards and `load_dataset("s5/...", streaming=True)` reads every selected row once."""
    from huggingface_hub import HfApi

    output_dir = tmp_path / "pushed"
    size = rs4p_workspace["image_size"]
    shutil.copytree(rs4p_reference_run[0] / "scores", output_dir / "scores")  # merge and export only
    for name in ("run_config.json", ".s5-manifest.json"):
        shutil.copy(rs4p_reference_run[0] / name, output_dir / name)
    outcome = run_selection(selection_arguments(output_dir, push_to_hub=True, hub_model_id="s5/rs4p-tiny"))
    assert outcome.chunks_scored == 0
    first = {f for f in HfApi().list_repo_files("s5/rs4p-tiny", repo_type="dataset") if f.endswith(".parquet")}
    assert first == {"data/train-00000-of-00001.parquet"}
    run_selection(selection_arguments(output_dir, push_to_hub=True, hub_model_id="s5/rs4p-tiny", min_shards=3))
    files = set(HfApi().list_repo_files("s5/rs4p-tiny", repo_type="dataset"))
    rows = list(datasets.load_dataset("s5/rs4p-tiny", split="train", streaming=True))
    assert {f for f in files if f.endswith(".parquet")} == {f"data/train-{i:05d}-of-00003.parquet" for i in range(3)}
    _, expected = read_selection(rs4p_reference_run[0])
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in expected) and len(rows) == 60
    assert rows[0]["mask"].mode == "L" and rows[0]["image"].size == (size, size)
    assert {"README.md", "entropy_histogram.png", "failures.jsonl", "selection_stats.json"} <= files


@pytest.mark.slow
def test_parquet_pool_selects_like_the_folder_pool(rs4p_workspace, rs4p_reference_run, selection_arguments,
                                                   read_selection, tmp_path):
    """The same images, ids and sources as one Parquet file (small row groups) give the same selection."""
    pool = open_pool([str(rs4p_workspace["pool"])])
    raws = [raw for chunk in pool.chunks(100) for raw in pool.read_chunk(chunk)]
    features = datasets.Features({"image": datasets.Image(), "source": datasets.Value("string"),
                                  "id": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [{"bytes": r.data, "path": None} for r in raws],
                                        "source": [r.source for r in raws], "id": [r.id for r in raws]},
                                       features=features)
    table.to_parquet(str(tmp_path / "pool.parquet"), batch_size=7)
    output_dir = tmp_path / "from_parquet"
    run_selection(selection_arguments(output_dir, pool=[str(tmp_path / "pool.parquet")]))
    assert read_selection(output_dir) == read_selection(rs4p_reference_run[0])


def test_resume_refuses_scores_made_differently(selection_arguments, tmp_path):
    output_dir = tmp_path / "changed"
    run_selection(selection_arguments(output_dir, max_chunks=1))
    with pytest.raises(ValueError, match="image_size: 64 -> 32"):
        run_selection(selection_arguments(output_dir, image_size=32))
    # --no_resume starts over instead
    outcome = run_selection(selection_arguments(output_dir, image_size=32, resume=False, max_chunks=1))
    assert outcome.chunks_reused == 0 and outcome.chunks_scored == 1
    (output_dir / "run_config.json").unlink()
    with pytest.raises(ValueError, match="no run_config.json"):
        run_selection(selection_arguments(output_dir, image_size=32))
