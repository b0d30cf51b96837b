"""Crash-safe file writes and ownership manifests: the one home for write-then-rename in s5-hf.

Every file or folder that s5-hf writes is first written under a temporary name in the same folder, flushed to
disk (`fsync`), then renamed over the final name, and the folder entry is flushed too. A process killed at any
point leaves either the old content or the new one under the final name, never a mix, plus at most a stray
temporary that the next write removes.

Folders are swapped with Linux's `renameat2(RENAME_EXCHANGE)`, one atomic step. Where that call is missing
(other systems, old kernels), the swap takes two renames; the one moment in between is repaired by
`recover_directory`, which every writer calls before it reads or replaces a folder.

A manifest (`.s5-manifest.json`) lists what a program wrote into a folder. Programs delete or replace only what
a manifest of theirs lists, and refuse folders holding anything else, so a user's files are never removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".s5-manifest.json"


def fsync_directory(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is flushed)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(path: str | os.PathLike, suffix: str = "tmp") -> Path:
    """A unique hidden name beside `path`, on the same file system, so that a rename onto `path` is atomic."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{suffix}")


def stale_temporaries(path: str | os.PathLike, suffix: str = "tmp") -> list[Path]:
    """The temporaries `temporary_sibling(path, suffix)` made that a killed writer left beside `path`."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.{re.escape(suffix)}$")
    return sorted(p for p in path.parent.iterdir() if name.match(p.name))


def remove_stale_temporaries(path: str | os.PathLike, suffix: str = "tmp") -> int:
    """Delete what `stale_temporaries` finds (files or staged folders); call while no writer of `path` runs."""
    stale = stale_temporaries(path, suffix)
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; on success it is flushed and renamed onto `path`.

    On an exception the temporary is removed and `path` keeps its old content.
    """
    path = Path(path)
    temporary = temporary_sibling(path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(temporary, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path for a writer that wants a file name (e.g. `pyarrow.parquet.write_table`);
    the file is flushed and renamed onto `path` when the block ends without an exception."""
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (integrity records, conversion records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """JSON written atomically; NaN and infinities are refused (they are not JSON)."""
    write_text(path, json.dumps(obj, allow_nan=False, **kwargs))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk: earlier lines are never rewritten (logs such as metrics.jsonl)."""
    if "\n" in line:
        raise ValueError("append_line takes a single line without a newline.")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.replaced")


def recover_directory(final: str | os.PathLike) -> None:
    """Repair the one state a two-rename folder swap can be interrupted in: `final` missing, its old copy
    still beside it. Call before reading or replacing `final`."""
    final = Path(final)
    old = _old_name(final)
    if old.exists() and not final.exists():
        os.replace(old, final)
        fsync_directory(final.parent)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


def replace_directory(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the complete folder `new` in place of `final` (which may not exist) without a moment in which a
    reader finds neither; the old content is deleted afterwards."""
    new, final = Path(new), Path(final)
    recover_directory(final)
    for path in new.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_directory(new)
    if not final.exists():
        os.replace(new, final)
    elif _exchange(new, final):
        shutil.rmtree(new)  # `new` now holds the old content
    else:
        old = _old_name(final)
        os.replace(final, old)
        os.replace(new, final)  # a kill between the two renames is repaired by recover_directory
        shutil.rmtree(old)
    fsync_directory(final.parent)


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block ends without an exception it replaces
    `final` (see `replace_directory`), otherwise it is deleted and `final` is untouched."""
    final = Path(final)
    staging = temporary_sibling(final, "partial")
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Manifests: what a program wrote into a folder
# ----------------------------------------------------------------------------------------------------------------
def write_manifest(folder: str | os.PathLike, kind: str, files: Iterable[str], **info: Any) -> None:
    """Record that `kind` (e.g. "s5-hf parquet shards") wrote `files` (paths relative to `folder`)."""
    folder = Path(folder)
    write_json(folder / MANIFEST_NAME, {"kind": kind, "files": sorted(set(files)), **info}, indent=2)


def read_manifest(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable s5-hf manifest ({error}); move it away or fix it.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ValueError(f"{path} is not an s5-hf manifest (no 'files' list); move it away or fix it.")
    return manifest


def foreign_entries(folder: str | os.PathLike, kind: str, allowed: Iterable[str] = ()) -> list[str]:
    """Entries of `folder` (relative paths of files) that neither a `kind` manifest lists nor `allowed` names:
    what a program writing `kind` into `folder` must not delete or overwrite."""
    folder = Path(folder)
    if not folder.exists():
        return []
    manifest = read_manifest(folder)
    owned = set(manifest["files"]) if manifest and manifest.get("kind") == kind else set()
    owned |= set(allowed) | {MANIFEST_NAME}
    foreign = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        relative = path.relative_to(folder).as_posix()
        if relative not in owned and not path.name.startswith("."):
            foreign.append(relative)
    return foreign
