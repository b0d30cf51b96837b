"""s5_hf.files: atomic file and folder writes, recovery of an interrupted swap, ownership manifests."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from s5_hf import files


def test_atomic_write_keeps_old_content_on_error(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"miou": 0.5})
    with pytest.raises(RuntimeError):
        with files.atomic_write(path, "w") as handle:
            handle.write('{"miou": 0.')
            raise RuntimeError("killed half-way")
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no stray temporary


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        files.write_json(tmp_path / "x.json", {"mF1": math.nan})
    assert not (tmp_path / "x.json").exists()


def test_append_line_never_rewrites(tmp_path):
    path = tmp_path / "metrics.jsonl"
    files.append_line(path, '{"step": 1}')
    inode = path.stat().st_ino
    files.append_line(path, '{"step": 2}')
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']
    assert path.stat().st_ino == inode
    with pytest.raises(ValueError):
        files.append_line(path, "two\nlines")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_directory(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_RENAMEAT2", None)
    final = tmp_path / "model"
    final.mkdir()
    (final / "weights").write_text("old")
    with files.staged_directory(final) as staging:
        (staging / "weights").write_text("new")
    assert (final / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(KeyError):
        with files.staged_directory(final) as staging:
            (staging / "weights").write_text("broken")
            raise KeyError("failure while writing")
    assert (final / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_recover_directory_after_kill_between_renames(tmp_path):
    """A process killed between the two renames of the fallback swap: the next writer restores the old folder."""
    final = tmp_path / "model"
    final.mkdir()
    (final / "weights").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from s5_hf import files
        files._RENAMEAT2 = None
        real_replace = os.replace
        calls = []
        def replace(a, b):
            real_replace(a, b)
            calls.append(b)
            if len(calls) == 1 and Path(b).name.endswith('.replaced'):
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        with files.staged_directory(Path({str(final)!r})) as staging:
            (staging / 'weights').write_text('new')
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert result.returncode == -signal.SIGKILL
    assert not final.exists()  # the interrupted state the two-rename swap can leave
    files.recover_directory(final)
    assert (final / "weights").read_text() == "old"


def test_foreign_entries_and_manifest(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train-0.parquet").write_text("x")
    assert files.foreign_entries(folder, "shards") == ["train-0.parquet"]
    files.write_manifest(folder, "shards", ["train-0.parquet"])
    assert files.foreign_entries(folder, "shards") == []
    assert files.foreign_entries(folder, "rs4p") == ["train-0.parquet"]  # another program's manifest owns nothing
    (folder / "notes.txt").write_text("mine")
    assert files.foreign_entries(folder, "shards") == ["notes.txt"]
    (folder / files.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="manifest"):
        files.foreign_entries(folder, "shards")
