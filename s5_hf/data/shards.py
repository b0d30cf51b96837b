"""Writing a dataset as Parquet shards with a dataset card: a folder that `datasets.load_dataset` reads
locally and that is a valid Hub dataset repository once uploaded.

Layout written in `out_dir`::

    README.md                              dataset card: YAML configs/dataset_info/label set + tables
    data/<split>-00000-of-000NN.parquet    shards of about `shard_size_mb`, at least `min_shards`

Rows are streamed: at most one row group (100 rows or 64 MB) is held in memory. Image columns keep their
encoded bytes (an image's original file, PNG masks); the `datasets` features go into the Parquet schema
metadata and the card, so `load_dataset` decodes them as images.

The new folder is built beside `out_dir` (files of other splits hard-linked, the new shards, card and
manifest written and flushed) and swapped in whole (`s5_hf.files.staged_directory`): an interrupted run
leaves the old folder as it was, and readers see the old shards with the old card or the new with the new.
Writing a split again needs ``overwrite=True``; the old shards are then replaced. A manifest
(``.s5-manifest.json``) lists what was written; a folder holding anything else (a README.md that s5-hf did
not write or that was edited since, any unlisted file) is refused, never overwritten.

`folder_to_shards` writes a user's `LabeledFolder` (any bands and dtype) as arrays of its own dtype, with its
classes, bands, dtype and nodata in the card; `shard_features` and `card_metadata` read a shard folder's
declaration back (`s5_hf.data.streams`, `s5_hf.data.normalization`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.utils import tqdm as hf_tqdm
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

from ..files import (
    MANIFEST_NAME,
    foreign_entries,
    read_manifest,
    recover_directory,
    remove_stale_temporaries,
    staged_directory,
    write_manifest,
    write_text,
)
from ..label_sets import LABEL_SETS, VOID_ID, LabelSet, get_label_set
from .registry import BENCHMARKS, get_reader

logger = logging.getLogger(__name__)

ROW_GROUP_ROWS = 100
ROW_GROUP_BYTES = 64 * 2**20
_SHARD_NAME = re.compile(r"^(?P<split>\w+(?:\.\w+)*)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
#: Manifest kind of the folders `to_parquet_shards` (and the RS4P export) write.
SHARDS_KIND = "s5-hf parquet shards"


@dataclass
class DatasetCardInfo:
    """What the dataset card says beyond what is computed from the data.

    Defaults come from the benchmark reader when the dataset holds a single known source (see
    `to_parquet_shards`); any field given here wins.
    """

    pretty_name: str | None = None
    description: str = ""
    #: Hub licence id (e.g. ``cc-by-nc-sa-4.0``), or ``other`` with `license_name` and `license_note`.
    license: str = "other"
    license_name: str | None = None
    license_note: str = ""
    homepage: str = ""
    citation: str = ""
    #: Label set whose classes the masks hold (name in `s5_hf.label_sets`), for the class table.
    label_set: str | None = None
    tags: list[str] = field(default_factory=lambda: ["remote-sensing", "semantic-segmentation", "s5"])
    #: Free Markdown appended to the card (e.g. how the data was made).
    notes: str = ""
    #: More YAML metadata fields, written as given (`folder_to_shards`: id2label, ignore_index, bands, dtype, nodata).
    metadata: dict = field(default_factory=dict)


def _benchmark_card(name: str) -> DatasetCardInfo:
    reader = get_reader(name)
    license_name = None if reader.license != "other" else f"{name}-terms"
    return DatasetCardInfo(
        pretty_name=name,
        description=reader.description,
        license=reader.license,
        license_name=license_name,
        license_note=reader.license_note,
        homepage=reader.homepage,
        citation=reader.citation,
        label_set=name,
    )


class _MaskCheck:
    """Validates masks against label sets and counts class pixels."""

    def __init__(self, label_set: str | LabelSet | None, validate: bool):
        self.fixed = get_label_set(label_set) if isinstance(label_set, str) else label_set
        self.validate = validate
        self.unchecked_sources: set[str] = set()
        self.pixels: dict[str, np.ndarray] = {}
        #: [min height, max height, min width, max width] of the masks seen.
        self.size_range: list[int] | None = None

    def label_set_for(self, source: str | None) -> LabelSet | None:
        if self.fixed is not None:
            return self.fixed
        if source is not None and source.lower() in LABEL_SETS:
            return LABEL_SETS[source.lower()]
        if self.validate and source not in self.unchecked_sources:
            self.unchecked_sources.add(source)
            logger.warning("No label set for source %r: its masks are not validated (pass label_set=...).", source)
        return None

    def __call__(self, data: bytes, row_id: str, source: str | None) -> bytes:
        """The bytes to store for a mask (PNG, mode L); raises ValueError for ids outside the label set."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                mode, file_format = image.mode, image.format
                ids = np.asarray(image)
        except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad bytes
            raise ValueError(f"Row {row_id!r}: the mask cannot be decoded ({error}).") from None
        if ids.ndim != 2:
            raise ValueError(f"Row {row_id!r}: the mask has mode {mode!r}; expected a single-band image of class ids.")
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"Row {row_id!r}: mask values {ids.min()}..{ids.max()} do not fit in 0..255.")
        ids = ids.astype(np.uint8, copy=False)
        label_set = self.label_set_for(source)
        counts = np.bincount(ids.ravel(), minlength=256)
        if label_set is not None:
            if self.validate:
                allowed = np.zeros(256, dtype=bool)
                allowed[: label_set.num_classes] = True
                allowed[[label_set.ignore_index, VOID_ID, *label_set.extra_ids]] = True
                bad = np.flatnonzero((counts > 0) & ~allowed)
                if bad.size:
                    found = ", ".join(f"{v} x {counts[v]}" for v in bad)
                    raise ValueError(
                        f"Row {row_id!r} (source {source!r}): mask ids outside the label set {label_set.name!r} "
                        f"(id x pixel count): {found}. Valid: 0..{label_set.num_classes - 1}, ignore "
                        f"{label_set.ignore_index}, void {VOID_ID}"
                        + "".join(f", {k} = {v}" for k, v in label_set.extra_ids.items())
                        + ". Pass validate=False to write it anyway."
                    )
            self.pixels.setdefault(label_set.name, np.zeros(256, dtype=np.int64))
            self.pixels[label_set.name] += counts
        height, width = ids.shape
        if self.size_range is None:
            self.size_range = [height, height, width, width]
        else:
            low_h, high_h, low_w, high_w = self.size_range
            self.size_range = [min(low_h, height), max(high_h, height), min(low_w, width), max(high_w, width)]
        if mode == "L" and file_format == "PNG":
            return data
        buffer = io.BytesIO()
        Image.fromarray(ids).save(buffer, format="PNG")
        return buffer.getvalue()


def _image_bytes(value, column: str, row_id: str) -> dict | None:
    """An Image cell with its bytes (read from `path` when only the path is stored)."""
    if value is None:
        return None
    if value.get("bytes") is not None:
        return {"bytes": value["bytes"], "path": None}
    if value.get("path"):
        try:
            return {"bytes": Path(value["path"]).read_bytes(), "path": None}
        except OSError as error:
            raise ValueError(f"Row {row_id!r}: column {column!r} points to an unreadable file ({error}).") from None
    raise ValueError(f"Row {row_id!r}: column {column!r} has neither bytes nor a path.")


def statistics_columns(schema: pa.Schema) -> list[str]:
    """Dotted paths of the leaf columns that are not binary."""
    names: list[str] = []

    def walk(prefix: str, data_type: pa.DataType) -> None:
        if pa.types.is_struct(data_type):
            for child in data_type:
                walk(f"{prefix}.{child.name}", child.type)
        elif not (pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)):
            names.append(prefix)

    for schema_field in schema:
        walk(schema_field.name, schema_field.type)
    return names


class _RollingWriter:
    """Parquet files of about `limit` bytes under temporary names, one row group per ~100 rows."""

    def __init__(self, data_dir: Path, split: str, schema: pa.Schema, limit: int):
        self.data_dir, self.split, self.schema, self.limit = data_dir, split, schema, limit
        self.token = uuid.uuid4().hex[:8]
        # Min/max statistics of encoded images are useless and as large as the data: keep them for the
        # small columns only.
        self.statistics_columns = statistics_columns(schema)
        self.paths: list[Path] = []
        self.rows_per_file: list[int] = []
        self._writer: pq.ParquetWriter | None = None
        self._batch: list[dict] = []
        self._batch_bytes = 0
        self._file_bytes = 0

    def temp_path(self, index: int) -> Path:
        return self.data_dir / f".{self.split}-{index:05d}.{self.token}.parquet.tmp"

    def add(self, row: dict, size: int) -> None:
        """Add a row of `size` encoded bytes; a file is closed before it would pass the limit (a single
        row larger than the limit gets a file of its own)."""
        if self._writer is not None and self._file_bytes + size > self.limit:
            self.close()
        if self._writer is None:
            self.paths.append(self.temp_path(len(self.paths)))
            self.rows_per_file.append(0)
            self._writer = pq.ParquetWriter(self.paths[-1], self.schema, write_statistics=self.statistics_columns)
            self._file_bytes = 0
        self._batch.append(row)
        self._batch_bytes += size
        self._file_bytes += size
        self.rows_per_file[-1] += 1
        if len(self._batch) >= ROW_GROUP_ROWS or self._batch_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._writer.write_table(pa.Table.from_pylist(self._batch, schema=self.schema))
            self._batch, self._batch_bytes = [], 0

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None

    def write_empty(self) -> None:
        self.paths.append(self.temp_path(0))
        self.rows_per_file.append(0)
        pq.write_table(self.schema.empty_table(), self.paths[-1])


def _repartition(writer: _RollingWriter, parts: int) -> tuple[list[Path], list[int]]:
    """Rewrite the temporary files into `parts` files of (almost) equal row counts, streaming."""
    total = sum(writer.rows_per_file)
    counts = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    token = uuid.uuid4().hex[:8]
    new_paths = [writer.data_dir / f".{writer.split}-{i:05d}.{token}.parquet.tmp" for i in range(parts)]

    def batches() -> Iterator[pa.RecordBatch]:
        for path in writer.paths:
            yield from pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS)

    source = batches()
    pending: pa.Table = writer.schema.empty_table()
    for path, count in zip(new_paths, counts, strict=True):
        with pq.ParquetWriter(path, writer.schema, write_statistics=writer.statistics_columns) as out:
            written = 0
            while written < count:
                if pending.num_rows == 0:
                    pending = pa.Table.from_batches([next(source)], schema=writer.schema)
                take = min(count - written, pending.num_rows)
                out.write_table(pending.slice(0, take))
                pending = pending.slice(take)
                written += take
    for path in writer.paths:
        path.unlink()
    return new_paths, counts


def _features_of(dataset: datasets.Dataset | datasets.IterableDataset) -> datasets.Features:
    features = dataset.features
    if features is None and isinstance(dataset, datasets.IterableDataset):
        features = dataset._resolve_features().features  # peeks at the first rows
    if features is None:
        raise ValueError("The dataset has no features; cast it (e.g. dataset.cast(features)) before writing.")
    return features


def _rows(dataset, image_columns: list[str]) -> Iterator[dict]:
    """Rows with Image columns left encoded (`{"bytes", "path"}`), streamed."""
    for column in image_columns:
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    yield from dataset


def to_parquet_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    out_dir: str | os.PathLike,
    shard_size_mb: float = 500,
    *,
    card: DatasetCardInfo | Mapping | None = None,
    min_shards: int = 1,
    split: str = "train",
    label_set: str | LabelSet | None = None,
    validate: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write `dataset` as ``out_dir/data/<split>-XXXXX-of-YYYYY.parquet`` shards plus a ``README.md`` card.

    Args:
        dataset: a map-style or streaming dataset (streamed either way; memory stays bounded). Image
            columns are stored as their encoded bytes; a ``mask`` Image column is validated and stored as
            PNG (mode L).
        out_dir: folder to write; other splits already in it are kept and listed in the card. A folder holding
            files that s5-hf did not write is refused (FileExistsError naming them), never changed.
        shard_size_mb: a shard is closed once its rows reach this many MB of encoded data.
        card: card metadata (`DatasetCardInfo` or a dict of its fields). Default: the benchmark's own
            (licence, citation, description) when every row has the same known ``source``.
        min_shards: at least this many shards (e.g. world_size x num_workers, so every rank and worker
            gets whole shards); rows are re-split evenly when the size limit gave fewer. Each shard gets at
            least one row, so the dataset must have at least `min_shards` rows.
        split: split name (letters, digits, underscores).
        label_set: label set the ``mask`` ids belong to (name or `LabelSet`); default: the row's ``source``
            when it names a label set (rows of other sources are not validated, with a warning).
        validate: check mask ids against the label set: ids other than its classes, its ignore index,
            its extra ids (ISPRS clutter) and 255 are a ValueError naming the row.
        overwrite: replace existing shards of `split` (otherwise FileExistsError).

    Returns:
        The shard paths, in order.
    """
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"Invalid split name {split!r}: use letters, digits and underscores (e.g. 'train').")
    if min_shards < 1:
        raise ValueError(f"min_shards must be >= 1, got {min_shards}")
    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be positive, got {shard_size_mb}")
    card = _card_fields(card)
    out_dir = Path(out_dir)
    if out_dir.is_symlink():  # swap the folder the link points to, not the link
        out_dir = out_dir.resolve()
    recover_directory(out_dir)
    remove_stale_temporaries(out_dir, "partial")  # staged folders of an interrupted run
    check_output_folder(out_dir)
    data_dir = out_dir / "data"
    existing = sorted(p for p in data_dir.glob(f"{split}-*.parquet") if _SHARD_NAME.match(p.name))
    if existing and not overwrite:
        raise FileExistsError(
            f"{data_dir} already holds {len(existing)} shard(s) of split {split!r} (e.g. {existing[0].name}); "
            "pass overwrite=True to replace them."
        )
    # Everything the card needs from the old folder and the arguments is checked before any row is written.
    previous_statistics = _previous_statistics(out_dir)
    _check_card(card, label_set)
    manifest = read_manifest(out_dir) or {}

    features = _features_of(dataset)
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    # N-band images (not 8-bit RGB) are stored as arrays of their own dtype: Parquet takes them as nested lists.
    array_columns = [name for name, feature in features.items()
                     if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D))]
    check_mask = "mask" in image_columns
    schema = features.arrow_schema.with_metadata(
        {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    )
    checker = _MaskCheck(label_set, validate)
    sources: Counter[str] = Counter()
    # The new folder is built beside the old one (kept files hard-linked, new shards and card written) and
    # swapped in whole: a reader sees the old shards and card or the new ones, never a mix.
    with staged_directory(out_dir) as staging:
        replaced = {MANIFEST_NAME, "README.md", *(f"data/{p.name}" for p in existing)}
        kept = _link_tree(out_dir, staging, skip=replaced)
        staged_data = staging / "data"
        staged_data.mkdir(exist_ok=True)
        writer = _RollingWriter(staged_data, split, schema, int(shard_size_mb * 2**20))
        try:
            total = len(dataset) if isinstance(dataset, datasets.Dataset) else None
            progress = hf_tqdm(
                _rows(dataset, image_columns), total=total, desc=f"Writing {split} shards", unit=" rows"
            )
            for index, row in enumerate(progress):
                row_id = str(row.get("id", f"#{index}"))
                source = row.get("source")
                size = 0
                for column in image_columns:
                    row[column] = _image_bytes(row[column], column, row_id)
                    if row[column] is not None:
                        if column == "mask" and check_mask:
                            row[column]["bytes"] = checker(row[column]["bytes"], row_id, source)
                        size += len(row[column]["bytes"])
                for column in array_columns:
                    if row[column] is not None:
                        array = np.asarray(row[column])
                        size += array.nbytes
                        row[column] = array.tolist()
                size += sum(len(v) for v in row.values() if isinstance(v, str))
                sources[str(source)] += 1
                writer.add(row, size)
        finally:
            writer.close()
        num_rows = sum(writer.rows_per_file)
        if num_rows < min_shards and not (num_rows == 0 and min_shards == 1):
            raise ValueError(f"The dataset has {num_rows} rows, fewer than min_shards={min_shards}.")
        if num_rows == 0:
            logger.warning("The dataset is empty: writing one empty shard for split %r.", split)
            writer.write_empty()
            paths, counts = writer.paths, writer.rows_per_file
        elif len(writer.paths) < min_shards:
            paths, counts = _repartition(writer, min_shards)
        else:
            paths, counts = writer.paths, writer.rows_per_file
        names = []
        for index, path in enumerate(paths):  # final names, inside the staged folder
            names.append(f"{split}-{index:05d}-of-{len(paths):05d}.parquet")
            path.rename(staged_data / names[-1])
        staged = [staged_data / name for name in names]

        statistics = {
            "num_examples": int(sum(counts)),
            "num_shards": len(staged),
            "num_bytes": int(sum(path.stat().st_size for path in staged)),
            "sources": dict(sorted(sources.items())),
            "mask_sizes": None
            if checker.size_range is None
            else {"height": checker.size_range[:2], "width": checker.size_range[2:]},
            "class_pixels": {
                name: {int(k): int(v) for k, v in enumerate(counts_) if v} for name, counts_ in checker.pixels.items()
            },
        }
        readme = _write_card(staging, split, features, statistics, _card_info(card, label_set, sources),
                             previous_statistics)
        owned = {f for f in manifest.get("files", []) if f in kept} | {f"data/{name}" for name in names}
        write_manifest(staging, SHARDS_KIND, owned | {"README.md"}, readme_sha256=readme)
    final = [data_dir / name for name in names]
    logger.info(
        "Wrote %d rows of split %r to %d shard(s) in %s", statistics["num_examples"], split, len(final), data_dir
    )
    return final


# ---------------------------------------------------------------------------------------------------------------
# A user's labeled folder as shards, and what a shard folder says about itself


def _nodata_key(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def _folder_rows(pairs, folder):
    """Rows of `pairs` as arrays: image (H, W, bands) of the file's dtype, mask (H, W), id, source."""
    for pair in pairs:
        try:
            row = folder.read(pair)  # checks the mask values against the classes
        except ValueError as error:
            raise ValueError(f"Row {pair.id!r}: {error}") from None
        yield {"image": np.asarray(row["image"]), "mask": row["mask"], "id": row["id"], "source": row["source"]}


def folder_to_shards(
    folder,
    out_dir: str | os.PathLike,
    splits: list[str] | tuple[str, ...] | None = None,
    *,
    shard_size_mb: float = 500,
    min_shards: int = 1,
    card: DatasetCardInfo | Mapping | None = None,
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Write a user's `LabeledFolder` (any bands and dtype, with nodata) as Parquet shards of arrays, one split after
    another (default: every split of the folder), and swap the whole folder in at the end: a bad row leaves
    `out_dir` as it was.

    Rows: ``image`` (`datasets.Array3D` (H, W, bands) of the files' dtype, channel-last as `LabeledFolder` rows),
    ``mask`` (`Array2D`, uint8, int32 if the ignore index exceeds 255; nodata pixels hold the ignore index), ``id``
    and ``source``. Arrays can vary in height only (the datasets Array features allow one variable dimension): images
    of different widths are refused. A mask value outside the classes is a ValueError naming the row and its file.

    The card's YAML metadata records ``id2label``, ``ignore_index``, ``bands`` (``count`` and ``descriptions``, None
    where unknown), ``dtype`` and ``nodata`` (the folder's `nodata`, else the value the GeoTIFFs declare; ``"nan"``
    for NaN, whose pixels the rows hold as 0 as `read_image` fills them; files declaring different values are an
    error: pass `nodata`). RGBA alpha nodata survives in the masks only. `DataSource(kind "shards")` reads the classes
    and `s5_hf.data.normalization` the band layout and nodata back from it."""
    from .folders import raster_info

    if folder.id2label is None:
        raise ValueError(f"{folder.name}={folder.location}: class names unknown: give the folder an id2label "
                         "(id2label.json) before writing it as shards.")
    splits = list(folder.splits) if splits is None else list(splits)
    info = folder.check()
    pairs = {split: folder.pairs(split) for split in splits}
    widths, declared = {}, {}
    for pair in (p for chosen in pairs.values() for p in chosen):
        header = raster_info(pair.image, folder.bands)
        widths.setdefault(header.width, pair.image)
        if folder.nodata is None and header.nodata is not None:
            declared.setdefault(_nodata_key(header.nodata), pair.image)
    if len(widths) > 1:
        (w1, p1), (w2, p2) = list(widths.items())[:2]
        raise ValueError(f"{p1} is {w1} px wide but {p2} is {w2}: shards store arrays whose height only may vary; "
                         "tile the images to one width first.")
    if len(declared) > 1:
        (v1, p1), (v2, p2) = list(declared.items())[:2]
        raise ValueError(f"{p1} declares nodata {v1} but {p2} declares {v2}: pass one nodata value for the folder.")
    nodata = folder.nodata if folder.nodata is not None else (float(next(iter(declared))) if declared else None)
    width = next(iter(widths))
    mask_dtype = "uint8" if folder.ignore_index <= 255 else "int32"
    features = datasets.Features({
        "image": datasets.Array3D(shape=(None, width, info.bands), dtype=info.dtype),
        "mask": datasets.Array2D(shape=(None, width), dtype=mask_dtype),
        "id": datasets.Value("string"), "source": datasets.Value("string")})
    metadata = {
        "id2label": {int(k): str(v) for k, v in folder.id2label.items()},
        "ignore_index": int(folder.ignore_index),
        "bands": {"count": int(info.bands), "descriptions": list(info.descriptions) or None},
        "dtype": info.dtype,
        "nodata": None if nodata is None else ("nan" if math.isnan(nodata) else float(nodata)),
    }
    card = _card_fields(card)
    if isinstance(card, DatasetCardInfo):
        card = DatasetCardInfo(**{**asdict(card), "metadata": {**card.metadata, **metadata}})
    else:
        card = {"pretty_name": folder.name, "label_set": None, **card,
                "metadata": {**card.get("metadata", {}), **metadata}}
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        out_dir = out_dir.resolve()
    recover_directory(out_dir)
    check_output_folder(out_dir)
    written = {}
    # Every split is written into one staged copy of the folder, swapped in once all succeeded.
    with staged_directory(out_dir) as staging:
        _link_tree(out_dir, staging, skip=set())
        for split in splits:
            rows = datasets.IterableDataset.from_generator(
                _folder_rows, gen_kwargs={"pairs": pairs[split], "folder": folder}, features=features)
            paths = to_parquet_shards(rows, staging, shard_size_mb, card=card, min_shards=min_shards, split=split,
                                      validate=False, overwrite=overwrite)
            written[split] = [out_dir / "data" / path.name for path in paths]
    return written


def shard_files(location: str | os.PathLike) -> list[Path]:
    """The Parquet files of a shard folder (``*.parquet`` or ``data/*.parquet``), sorted."""
    location = Path(location)
    return sorted(location.glob("*.parquet")) or sorted(location.glob("data/*.parquet"))


def card_metadata(location: str | os.PathLike) -> dict:
    """The YAML metadata of a shard folder's dataset card (README.md); empty without a card or metadata."""
    card = Path(location) / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text()
    if not text.startswith("---"):
        return {}
    import yaml

    try:
        metadata = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{card}: the card's YAML metadata does not parse ({error}).") from None
    return metadata if isinstance(metadata, dict) else {}


def shard_features(location: str | os.PathLike) -> datasets.Features | None:
    """The `datasets` features of a shard folder: from the first shard's Parquet schema metadata (the
    ``huggingface`` key `datasets` writes), else from the card's ``dataset_info``; None if neither declares them."""
    files = shard_files(location)
    if files:
        try:
            metadata = pq.read_schema(files[0]).metadata or {}
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{files[0]}: not a readable Parquet file ({error}).") from None
        if b"huggingface" in metadata:
            features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features")
            if features:
                return datasets.Features.from_dict(features)
    info = card_metadata(location).get("dataset_info")
    if isinstance(info, list):  # one entry per config: take the default one
        info = next((i for i in info if i.get("config_name", "default") == "default"), None)
    if isinstance(info, dict) and info.get("features"):
        return DatasetInfo._from_yaml_dict(info).features
    return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_output_folder(out_dir: str | os.PathLike) -> None:
    """Refuse a folder holding files that `to_parquet_shards` (or the RS4P export) did not write.

    Such files are never deleted or replaced: a ``README.md`` not written by s5-hf, or edited since, counts
    as foreign, as does any file its manifest does not list (hidden files excepted).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file, not a folder: choose a folder for the dataset.")
    foreign = foreign_entries(out_dir, SHARDS_KIND)
    readme = out_dir / "README.md"
    if readme.is_file() and "README.md" not in foreign:
        manifest = read_manifest(out_dir) or {}
        if manifest.get("readme_sha256") != _digest(readme):
            foreign.insert(0, "README.md (edited since s5-hf wrote it)")
    if foreign:
        listed = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise FileExistsError(
            f"{out_dir} holds files that s5-hf did not write: {listed}. They are never deleted or replaced: "
            "write to a new or empty folder, or move them away."
        )


def claim_files(folder: str | os.PathLike, names: list[str]) -> None:
    """Add `names` (relative paths) to the manifest `to_parquet_shards` wrote in `folder` (e.g. reports the
    RS4P export puts beside the shards), so that a later write may replace them."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("kind") != SHARDS_KIND:
        raise ValueError(f"{folder} has no manifest of to_parquet_shards to add {names} to.")
    files = set(manifest.pop("files")) | set(names)
    write_manifest(folder, manifest.pop("kind"), files, **manifest)


def keep_hidden_files(old: str | os.PathLike, new: str | os.PathLike) -> set[str]:
    """Hard-link the hidden files of folder `old` (e.g. a clone's ``.gitattributes``; not the manifest) into
    `new`, a folder that is about to replace it, so the swap does not delete them."""
    def hidden(relative: str) -> bool:
        return relative != MANIFEST_NAME and any(part.startswith(".") for part in relative.split("/"))

    return _link_tree(Path(old), Path(new), skip=set(), keep=hidden)


def _link_tree(source: Path, target: Path, skip: set[str], keep=None) -> set[str]:
    """Hard-link (or copy, where links fail) every file of `source` into `target` except the relative paths
    in `skip` (and, with `keep`, those it rejects); returns the relative paths linked."""
    linked = set()
    if not source.is_dir():
        return linked
    for directory, subdirectories, names in os.walk(source):
        relative_dir = Path(directory).relative_to(source)
        # os.walk lists links to folders with the folders but does not enter them: keep them as links.
        links = [name for name in subdirectories if Path(directory, name).is_symlink()]
        for name in links + names:
            relative = (relative_dir / name).as_posix()
            if relative in skip or (keep is not None and not keep(relative)):
                continue
            (target / relative_dir).mkdir(parents=True, exist_ok=True)
            try:
                os.link(Path(directory, name), target / relative, follow_symlinks=False)
            except OSError:
                shutil.copy2(Path(directory, name), target / relative, follow_symlinks=False)
            linked.add(relative)
    return linked


def _previous_statistics(out_dir: Path) -> dict:
    """The per-split statistics of the card already in `out_dir` (empty when there is none)."""
    readme = out_dir / "README.md"
    if not readme.is_file():
        return {}
    try:
        data = DatasetCard.load(readme).data.to_dict()
    except Exception as error:  # noqa: BLE001 - YAML and card errors come in many types
        raise ValueError(f"{readme}: the dataset card does not parse ({error}); fix it or move it away.") from None
    return data.get("s5_statistics") or {}


def _check_card(card: DatasetCardInfo | dict, label_set) -> None:
    """Build the card's metadata with the given fields (no rows yet), so a bad field fails before any write."""
    info = _card_info(card, label_set, Counter())
    if info.label_set:
        get_label_set(info.label_set)
    empty = {"num_examples": 0, "num_shards": 0, "num_bytes": 0, "sources": {}, "mask_sizes": None,
             "class_pixels": {}}
    _card_content("train", datasets.Features({"id": datasets.Value("string")}), empty, info, {})


def _card_fields(card: DatasetCardInfo | Mapping | None) -> DatasetCardInfo | dict:
    """The card argument checked before anything is written: a `DatasetCardInfo`, or a dict of its fields."""
    if isinstance(card, DatasetCardInfo):
        return card
    given = dict(card or {})
    valid = sorted(DatasetCardInfo.__dataclass_fields__)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(f"Unknown DatasetCardInfo field(s) {unknown}; valid: {valid}")
    return given


def _card_info(card: DatasetCardInfo | dict, label_set, sources: Counter) -> DatasetCardInfo:
    """The card's metadata: `card` itself, or its fields over the defaults of the rows' benchmark."""
    if isinstance(card, DatasetCardInfo):
        return card
    given = dict(card)
    names = {s.lower() for s in sources}
    if len(names) == 1 and next(iter(names)) in BENCHMARKS:
        base = _benchmark_card(next(iter(names)))
    else:
        base = DatasetCardInfo()
    if label_set is not None and "label_set" not in given:
        given["label_set"] = label_set if isinstance(label_set, str) else label_set.name
    return DatasetCardInfo(**{**asdict(base), **given})


def _splits_on_disk(data_dir: Path) -> dict[str, list[Path]]:
    splits: dict[str, list[Path]] = {}
    for path in sorted(data_dir.glob("*.parquet")):
        match = _SHARD_NAME.match(path.name)
        if match:
            splits.setdefault(match["split"], []).append(path)
    return splits


def _write_card(
    out_dir: Path, split: str, features: datasets.Features, statistics: dict, info: DatasetCardInfo,
    previous_statistics: dict,
) -> str:
    """Write README.md into `out_dir` (whose data/ holds every split's shards); returns its SHA-256."""
    content = _card_content(split, features, statistics, info, previous_statistics, _splits_on_disk(out_dir / "data"))
    readme = out_dir / "README.md"
    write_text(readme, content)
    return _digest(readme)


def _card_content(
    split: str, features: datasets.Features, statistics: dict, info: DatasetCardInfo, previous_statistics: dict,
    on_disk: dict | None = None,
) -> str:
    on_disk = {split: []} if on_disk is None else on_disk
    all_statistics = {**previous_statistics, split: statistics}
    all_statistics = {name: stats for name, stats in all_statistics.items() if name in on_disk}

    label_set = get_label_set(info.label_set) if info.label_set else None
    data = DatasetCardData(
        license=info.license,
        pretty_name=info.pretty_name,
        task_categories=["image-segmentation"],
        tags=list(info.tags),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in on_disk],
            }
        ],
    )
    if info.license == "other":
        data.license_name = info.license_name or "other"
        if info.homepage:
            data.license_link = info.homepage
    split_dict = datasets.SplitDict()
    for name, stats in all_statistics.items():
        if stats:
            split_dict.add(
                datasets.SplitInfo(name=name, num_bytes=stats["num_bytes"], num_examples=stats["num_examples"])
            )
    DatasetInfosDict({"default": DatasetInfo(features=features, splits=split_dict)}).to_dataset_card_data(data)
    if label_set is not None:
        data.label_set = {
            "name": label_set.name,
            "num_classes": label_set.num_classes,
            "class_names": dict(label_set.id2label),
            "ignore_index": label_set.ignore_index,
            "void_id": VOID_ID,
            "extra_ids": dict(label_set.extra_ids),
        }
    data.s5_statistics = all_statistics
    for key, value in info.metadata.items():
        setattr(data, key, value)
    content = f"---\n{data.to_yaml()}\n---\n" + _card_markdown(info, features, label_set, all_statistics)
    # Parsed and serialised again as DatasetCard.save does: a card whose YAML does not load is never written.
    return str(DatasetCard(content))


def _card_markdown(
    info: DatasetCardInfo, features: datasets.Features, label_set: LabelSet | None, statistics: dict
) -> str:
    title = info.pretty_name or (label_set.name if label_set else "Segmentation dataset")
    lines = [f"# {title}", ""]
    if info.description:
        lines += [info.description, ""]
    if info.homepage:
        lines += [f"Original data: {info.homepage}", ""]
    lines += [
        "Written by `s5_hf.data.to_parquet_shards` (s5-hf). Load it with:",
        "",
        "```python",
        "from datasets import load_dataset",
        'dataset = load_dataset("<this repo or folder>", split="train", streaming=True)',
        "```",
        "",
        "## Columns",
        "",
        "| column | type | content |",
        "|---|---|---|",
    ]
    meaning = {
        "image": "RGB image (encoded bytes of the original file, or PNG)",
        "mask": f"class ids, PNG mode L; {VOID_ID} = void/ignore",
        "source": "dataset the row comes from",
        "id": "stable unique id (file stem, plus `_y<top>_x<left>` for patches)",
    }
    for name, feature in features.items():
        kind = type(feature).__name__ if not isinstance(feature, datasets.Value) else feature.dtype
        text = meaning.get(name, "")
        if isinstance(feature, (datasets.Array2D, datasets.Array3D)):
            text = {"image": f"image array (height, width, bands) of {feature.dtype}",
                    "mask": f"class ids, {feature.dtype} array; {VOID_ID} = void/ignore"}.get(name, text)
        lines.append(f"| `{name}` | {kind} | {text} |")
    if label_set is not None:
        lines += ["", "## Classes", "", f"Label set `{label_set.name}`: {label_set.num_classes} classes.", ""]
        lines += ["| id | class | colour (RGB) |", "|---|---|---|"]
        for class_id, name in label_set.id2label.items():
            color = label_set.palette[class_id] if class_id < len(label_set.palette) else ""
            lines.append(f"| {class_id} | {name} | {color} |")
        lines += ["", "## Ignored ids", "", "| id | meaning |", "|---|---|"]
        for class_id, name in label_set.extra_ids.items():
            lines.append(f"| {class_id} | {name} (in the labels, ignored by loss and metrics) |")
        if label_set.ignore_index != VOID_ID and label_set.ignore_index not in label_set.extra_ids:
            lines.append(f"| {label_set.ignore_index} | ignore index |")
        lines.append(f"| {VOID_ID} | void: no data, eroded boundary or padding |")
    lines += ["", "## Statistics", ""]
    for split, stats in statistics.items():
        sources = ", ".join(f"{k}: {v}" for k, v in stats["sources"].items())
        lines += [
            f"### {split}",
            "",
            f"- examples: {stats['num_examples']} in {stats['num_shards']} shard(s), "
            f"{stats['num_bytes'] / 2**20:.1f} MB",
            f"- sources: {sources}",
        ]
        if stats.get("mask_sizes"):
            sizes = stats["mask_sizes"]
            lines.append(
                f"- mask height {sizes['height'][0]}..{sizes['height'][1]}, "
                f"width {sizes['width'][0]}..{sizes['width'][1]} px"
            )
        for set_name, pixels in stats.get("class_pixels", {}).items():
            total = sum(pixels.values()) or 1
            names = get_label_set(set_name).id2label | get_label_set(set_name).extra_ids | {VOID_ID: "void"}
            share = ", ".join(
                f"{names.get(int(k), k)} {100 * v / total:.1f}%"
                for k, v in sorted(pixels.items(), key=lambda kv: int(kv[0]))
            )
            lines.append(f"- pixels ({set_name}): {share}")
        lines.append("")
    lines += ["## Licence", "", f"`{info.license}`" + (f" ({info.license_name})" if info.license == "other" else "")]
    if info.license_note:
        lines += ["", info.license_note]
    if info.citation:
        lines += ["", "## Citation", "", "```bibtex", info.citation, "```"]
    if info.notes:
        lines += ["", info.notes]
    return "\n".join(lines) + "\n"


__all__ = ["SHARDS_KIND", "DatasetCardInfo", "card_metadata", "check_output_folder", "claim_files",
           "folder_to_shards", "keep_hidden_files", "shard_features", "shard_files", "to_parquet_shards"]
