"""Reading an image pool in deterministic chunks: image folders, Parquet shards or `datasets` datasets.

A pool is an ordered list of *parts* (one folder, one Parquet file or one dataset each). Each part is an
ordered list of images with an id and a source; a *chunk* is a run of consecutive images of one part. The
chunk list depends only on the pool's contents and the chunk size, so any process can compute it and
chunk i means the same images everywhere (the unit of work splitting, score shards and resuming).

Pool specifications (`open_pool`):
- `PATH` of a folder of images with one subfolder per source: `PATH/<source>/**/<image>`; the id is the path
  relative to `PATH` (`<source>/...`). Images directly in `PATH` have no source and are rejected.
- `SOURCE=PATH` of a folder: every image below `PATH` has that source; the id is `SOURCE/<relative path>`.
- `PATH` of a `.parquet` file or of a folder of them (each file one part), with an `image` column (a
  `datasets` Image struct `{bytes, path}` or plain binary) and a `source` column (or `SOURCE=PATH`), and an
  optional `id` column (default id `<file stem>/<row>`).
- `PATH` of a dataset saved with `datasets.save_to_disk` (a `DatasetDict` uses `split`), or a
  `datasets.Dataset` object (Python API); same columns as Parquet (default id `<name>/<row>`).
- anything else is passed to `datasets.load_dataset(spec, split=split)` (a Hub id).
Non-image files in image folders are counted and logged, never scored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class RawImage:
    """One pool image before decoding: encoded bytes, or the reason they could not be read."""

    id: str
    source: str
    data: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class Chunk:
    """Images `[start, stop)` of pool part `part`; `index` is its position in the pool's chunk list."""

    index: int
    part: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class PoolPart(ABC):
    """One input of a pool: an ordered, fixed list of images with ids and sources."""

    #: Human-readable origin, part of the pool fingerprint and of error messages.
    description: str

    @abstractmethod
    def ids(self) -> list[str]:
        """The ids of all images, in order."""

    @abstractmethod
    def read(self, start: int, stop: int) -> Iterator[RawImage]:
        """Images `[start, stop)` in order, exactly `stop - start` of them (unreadable ones carry an error)."""

    def read_rows(self, rows: Sequence[int]) -> Iterator[RawImage]:
        """Images at the given ascending positions (one pass over the range they span)."""
        if not rows:
            return
        wanted = set(rows)
        for offset, raw in enumerate(self.read(rows[0], rows[-1] + 1)):
            if rows[0] + offset in wanted:
                yield raw

    def __len__(self) -> int:
        return len(self.ids())


class FolderPart(PoolPart):
    """Image files below `root`, sorted by relative path."""

    def __init__(self, root: str | os.PathLike, source: str | None = None):
        self.root = Path(root)
        self.source = source
        self.description = f"folder:{self.root.resolve()}" + (f" source={source}" if source else "")
        self._files, skipped = _list_images(self.root)
        if skipped:
            logger.info(
                "%s: ignored %d non-image files (extensions %s).",
                self.root, sum(skipped.values()), dict(skipped.most_common(5)),
            )
        if source is None:
            loose = [f for f in self._files if "/" not in f]
            if loose:
                raise ValueError(
                    f"{self.root}: {len(loose)} images (e.g. {loose[0]!r}) are not inside a source subfolder. "
                    f"Put each source's images in PATH/<source>/, or tag the whole folder with SOURCE={self.root}."
                )
        self._ids = [f"{source}/{f}" if source else f for f in self._files]

    def __len__(self) -> int:
        return len(self._files)

    def ids(self) -> list[str]:
        return self._ids

    def read(self, start: int, stop: int) -> Iterator[RawImage]:
        return self.read_rows(range(start, stop))

    def read_rows(self, rows: Sequence[int]) -> Iterator[RawImage]:
        for row in rows:  # files are independent: read only the ones asked for
            relative, image_id = self._files[row], self._ids[row]
            source = self.source or relative.split("/", 1)[0]
            try:
                data = (self.root / relative).read_bytes()
            except OSError as error:
                yield RawImage(image_id, source, None, f"unreadable file: {error}")
                continue
            yield RawImage(image_id, source, data)


def _list_images(root: Path) -> tuple[list[str], Counter]:
    files, skipped = [], Counter()
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            relative = Path(directory, name).relative_to(root).as_posix()
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                files.append(relative)
            else:
                skipped[suffix or "(none)"] += 1
    files.sort()
    return files, skipped


class _ColumnarPart(PoolPart):
    """Shared logic of Parquet files and datasets: `image`, `source` and optional `id` columns."""

    def _check_columns(self, columns: Sequence[str], default_source: str | None) -> None:
        if "image" not in columns:
            raise ValueError(f"{self.description}: no 'image' column (columns: {list(columns)}).")
        if self.source is None and "source" not in columns and default_source is not None:
            self.source = default_source
        if self.source is None and "source" not in columns:
            raise ValueError(
                f"{self.description}: no 'source' column (columns: {list(columns)}). Add one, or tag the input "
                "with SOURCE=PATH."
            )

    def _raw_image(self, image_id: str, source: str | None, value) -> RawImage:
        source = self.source or source
        if source is None:
            return RawImage(image_id, "<missing>", None, "missing source")
        if value is None:
            return RawImage(image_id, source, None, "empty image cell")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return RawImage(image_id, source, bytes(value))
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return RawImage(image_id, source, bytes(value["bytes"]))
            path = value.get("path")
            if path:
                candidate = Path(path) if os.path.isabs(path) else self._base_dir / path
                try:
                    return RawImage(image_id, source, candidate.read_bytes())
                except OSError as error:
                    return RawImage(image_id, source, None, f"image has no bytes and its path is unreadable: {error}")
            return RawImage(image_id, source, None, "image cell has neither bytes nor path")
        return RawImage(image_id, source, None, f"unsupported image cell of type {type(value).__name__}")


class ParquetPart(_ColumnarPart):
    """One Parquet file; only the row groups overlapping the requested rows are read."""

    def __init__(self, path: str | os.PathLike, source: str | None = None, id_prefix: str | None = None,
                 default_source: str | None = None):
        self.path = Path(path)
        self.source = source
        self._base_dir = self.path.parent
        self.description = f"parquet:{self.path.resolve()}" + (f" source={source}" if source else "")
        self._file = pq.ParquetFile(self.path)
        self._check_columns(self._file.schema_arrow.names, default_source)
        self._has_id = "id" in self._file.schema_arrow.names
        self._id_prefix = id_prefix or self.path.stem
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return self._file.metadata.num_rows

    def __getstate__(self) -> dict:
        # The open Parquet reader cannot be pickled (`datasets` hashes generators by pickling them).
        return {**self.__dict__, "_file": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._file = pq.ParquetFile(self.path)

    def ids(self) -> list[str]:
        if self._ids is None:
            if self._has_id:
                values = self._file.read(columns=["id"]).column("id").to_pylist()
                _check_ids(values, self.description)
                self._ids = [str(v) for v in values]
            else:
                self._ids = [f"{self._id_prefix}/{row}" for row in range(len(self))]
        return self._ids

    def read(self, start: int, stop: int) -> Iterator[RawImage]:
        ids = self.ids()
        columns = ["image"] + (["source"] if self.source is None else [])
        metadata = self._file.metadata
        group_start = 0
        for group in range(metadata.num_row_groups):
            group_rows = metadata.row_group(group).num_rows
            group_stop = group_start + group_rows
            if group_stop > start and group_start < stop:
                table = self._file.read_row_group(group, columns=columns)
                lo, hi = max(start, group_start) - group_start, min(stop, group_stop) - group_start
                table = table.slice(lo, hi - lo)
                images = table.column("image").to_pylist()
                sources = table.column("source").to_pylist() if self.source is None else [None] * len(images)
                for offset, (value, source) in enumerate(zip(images, sources)):
                    yield self._raw_image(ids[group_start + lo + offset], source, value)
            group_start = group_stop
            if group_start >= stop:
                break


class DatasetPart(_ColumnarPart):
    """A `datasets.Dataset` (memory-mapped Arrow): rows are read `[start, stop)` at a time, undecoded."""

    def __init__(self, dataset, name: str, source: str | None = None, default_source: str | None = None):
        import datasets

        self.source = source
        self.description = f"dataset:{name}" + (f" source={source}" if source else "")
        self._base_dir = Path.cwd()
        self._check_columns(dataset.column_names, default_source)
        wanted = ("image", "id") if self.source else ("image", "source", "id")
        keep = [c for c in wanted if c in dataset.column_names]
        dataset = dataset.select_columns(keep)
        if isinstance(dataset.features["image"], datasets.Image):
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        self._dataset = dataset
        if "id" in dataset.column_names:
            values = list(dataset["id"])
            _check_ids(values, self.description)
            self._ids = [str(v) for v in values]
        else:
            self._ids = [f"{name}/{row}" for row in range(len(dataset))]

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return self._ids

    def read(self, start: int, stop: int) -> Iterator[RawImage]:
        rows = self._dataset[start:stop]
        sources = rows["source"] if "source" in rows else [None] * (stop - start)
        for offset, (value, source) in enumerate(zip(rows["image"], sources)):
            yield self._raw_image(self._ids[start + offset], source, value)


def _check_ids(values: list, description: str) -> None:
    missing = sum(v is None for v in values)
    if missing:
        raise ValueError(f"{description}: {missing} rows have an empty 'id'.")


class ImagePool:
    """An ordered list of pool parts, cut into chunks; ids must be unique across all parts.

    `spec` is the `open_pool` call that built the pool, if any: pickling such a pool stores only that call
    (cheap to pickle and hash however many images the pool holds).
    """

    def __init__(self, parts: Sequence[PoolPart], spec: tuple | None = None):
        if not parts:
            raise ValueError("The pool is empty: no inputs given.")
        self.parts = list(parts)
        self.spec = spec
        seen: dict[str, str] = {}
        for part in self.parts:
            for image_id in part.ids():
                if image_id in seen:
                    raise ValueError(
                        f"Duplicate image id {image_id!r} in {part.description} and {seen[image_id]}: ids must be "
                        "unique across the pool (tag inputs with distinct SOURCE= names or add an 'id' column)."
                    )
                seen[image_id] = part.description

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __reduce__(self):
        if self.spec is not None:
            return open_pool, self.spec
        return ImagePool, (self.parts,)

    def chunks(self, chunk_size: int) -> list[Chunk]:
        """Consecutive runs of at most `chunk_size` images, never spanning two parts."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
        chunks = []
        for part_index, part in enumerate(self.parts):
            for start in range(0, len(part), chunk_size):
                chunks.append(Chunk(len(chunks), part_index, start, min(start + chunk_size, len(part))))
        return chunks

    def read_chunk(self, chunk: Chunk) -> Iterator[RawImage]:
        return self.parts[chunk.part].read(chunk.start, chunk.stop)

    def chunk_ids(self, chunk: Chunk) -> list[str]:
        return self.parts[chunk.part].ids()[chunk.start:chunk.stop]

    def fingerprint(self) -> str:
        """SHA-256 of the parts' descriptions and ordered ids: changes whenever the chunk contents would."""
        digest = hashlib.sha256()
        for part in self.parts:
            digest.update(f"{part.description}\n{len(part)}\n".encode())
            for image_id in part.ids():
                digest.update(image_id.encode())
                digest.update(b"\0")
        return digest.hexdigest()


def _split_source(spec: str) -> tuple[str | None, str]:
    """`SOURCE=PATH` -> (SOURCE, PATH); a spec that is an existing path, or has no valid tag, is untagged."""
    if "=" in spec and not os.path.exists(spec):
        source, path = spec.split("=", 1)
        if _SOURCE_NAME.match(source):
            return source, path
    return None, spec


def _parts_from_path(path: Path, source: str | None, split: str, default_source: str | None) -> list[PoolPart]:
    if path.is_file():
        if path.suffix == ".parquet":
            return [ParquetPart(path, source, default_source=default_source)]
        raise ValueError(f"{path}: a pool file must be a .parquet file; pass folders of images as folders.")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path}: no split {split!r} (splits: {list(loaded)}).")
            loaded = loaded[split]
        return [DatasetPart(loaded, name=path.name, source=source, default_source=default_source)]
    parquet_files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    if parquet_files:
        images, _ = _list_images(path)
        if images:
            raise ValueError(
                f"{path} holds both Parquet files ({len(parquet_files)}) and image files ({len(images)}): "
                "pass them as separate inputs."
            )
        return [
            ParquetPart(file, source, id_prefix=file.relative_to(path).with_suffix("").as_posix(),
                        default_source=default_source)
            for file in parquet_files
        ]
    return [FolderPart(path, source)]


def _looks_like_path(location: str) -> bool:
    """Whether a missing pool input is a mistyped local path rather than a Hub id (``name`` or ``owner/name``)."""
    return (
        os.path.isabs(location)
        or location.startswith(("./", "../", "~", ".\\"))
        or location.replace("\\", "/").count("/") > 1
        or Path(location).suffix.lower() in IMAGE_EXTENSIONS | {".parquet", ".arrow"}
    )


def open_pool(specs: Sequence, split: str = "train", default_source: str | None = None) -> ImagePool:
    """Build a pool from specifications (see the module docstring) or `datasets.Dataset` objects.

    `default_source` is the source of Parquet/dataset inputs without a `source` column (otherwise an error).
    """
    if isinstance(specs, (str, os.PathLike)) or not isinstance(specs, Sequence):
        specs = [specs]
    specs = list(specs)
    parts: list[PoolPart] = []
    for number, spec in enumerate(specs):
        if not isinstance(spec, (str, os.PathLike)):
            if not hasattr(spec, "column_names"):
                raise TypeError(
                    f"Pool input {number} is a {type(spec).__name__}: expected a path, SOURCE=PATH or a Dataset."
                )
            parts.append(DatasetPart(spec, name=f"dataset{number}", default_source=default_source))
            continue
        source, location = _split_source(str(spec))
        path = Path(location)
        if path.exists():
            parts.extend(_parts_from_path(path, source, split, default_source))
        elif _looks_like_path(location):
            raise FileNotFoundError(
                f"Pool input {number} ({spec!r}): {path} does not exist. Expected an image folder "
                "(PATH/<source>/<images>), SOURCE=FOLDER, a .parquet file or folder of them, a saved dataset, or a "
                "Hub dataset id (owner/name)."
            )
        else:
            import datasets

            logger.info("%s is not a local path: loading it with datasets.load_dataset(split=%r).", location, split)
            try:
                dataset = datasets.load_dataset(location, split=split)
            except Exception as error:  # noqa: BLE001 - datasets raises many types; keep the cause
                raise ValueError(
                    f"Pool input {number} ({spec!r}) is neither an existing local file or folder nor a dataset "
                    f"that datasets.load_dataset({location!r}, split={split!r}) can load: "
                    f"{type(error).__name__}: {error}"
                ) from error
            parts.append(DatasetPart(dataset, name=location, source=source, default_source=default_source))
    return ImagePool(parts, spec=(specs, split, default_source))


__all__ = ["Chunk", "DatasetPart", "FolderPart", "ImagePool", "ParquetPart", "PoolPart", "RawImage", "open_pool"]
