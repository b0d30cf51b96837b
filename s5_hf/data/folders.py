"""A generic labeled dataset: a folder (or CSV) of image/mask pairs, any band count and dtype, with nodata.

Layouts accepted as the LOCATION of a ``NAME=LOCATION`` source (see `s5_hf.data.streams`):

- ``LOCATION/images/`` + ``LOCATION/masks/``: pairs matched by file stem (path below the folder, without the
  extension); every image needs a mask and every mask an image.
- ``LOCATION/train/{images,masks}`` and optionally ``LOCATION/val/{images,masks}``: the splits as given.
- ``LOCATION/images/`` (or ``LOCATION/train/images``) without masks: unlabeled images, for S4P's unlabeled stream
  (`load(split, images_only=True)`); reading such a folder as labeled data is a `DataFileError` naming the image.
- a CSV file (LOCATION itself, or the single ``*.csv`` in the folder) with columns ``image`` and ``mask`` (paths
  relative to the CSV's folder) and optionally ``split`` (train/val).

Without a ``val`` split, ``validation_split=FRACTION`` holds out a fixed, seeded choice of pairs (by crc32 of the
id, as the benchmarks' held-out tiles: `s5_hf.data.registry.heldout_ids`).

Files: GeoTIFF (``.tif``/``.tiff``) through rasterio (the ``geo`` extra): N bands of uint8, uint16, int16 or
float32; PNG and JPEG through Pillow (8-bit RGB, RGBA with the alpha band as nodata, grey-scale, 16-bit grey).
Masks hold class ids 0..K-1 or the task's ignore index; the classes come from `id2label` (``--labels``) or an
``id2label.json`` in the folder.

Nodata: the image's GeoTIFF nodata value, or `nodata` given explicitly (``--nodata``), or alpha = 0; a pixel whose
every band is nodata gets the ignore index in the mask, so the loss and the metrics skip it (it is never a class).
A NaN nodata value marks NaN pixels; those are set to 0 in the image so that nothing NaN reaches the model.

Every problem is a `DataFileError` naming the file: image and mask of different size or CRS, band counts or dtypes
that differ across the dataset, a mask value outside the classes, an undeclared NaN in a float image, an image
without a mask (or the reverse). The headers of all pairs are checked when a split is loaded, before any training.

Rows: ``image`` (a PIL RGB image for 8-bit 3-band data, as the benchmark readers give; otherwise an (H, W, C)
array of the file's dtype), ``mask`` ((H, W) uint8 class ids, int32 if the ignore index exceeds 255), ``id``,
``source``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from ..label_sets import VOID_ID
from .images import (PIL_BAND_DESCRIPTIONS, BandSelectionError, DataFileError, open_image, parse_bands,
                     raster_band_names, resolve_bands, stored_format)

GEOTIFF_SUFFIXES = (".tif", ".tiff")
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = GEOTIFF_SUFFIXES + PILLOW_SUFFIXES
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
_PIL_DTYPES = {"RGB": ("uint8", 3), "RGBA": ("uint8", 4), "L": ("uint8", 1), "P": ("uint8", 1), "LA": ("uint8", 2),
               "I;16": ("uint16", 1), "I;16L": ("uint16", 1), "I;16B": ("uint16", 1), "I": ("int32", 1),
               "F": ("float32", 1)}


@dataclass(frozen=True)
class RasterInfo:
    """A file's header: size, bands, dtype, CRS (WKT or None) and nodata value (None if not declared)."""

    path: Path
    height: int
    width: int
    bands: int
    dtype: str
    crs: str | None = None
    nodata: float | None = None
    #: Band descriptions of the (selected) bands, None where a band has none.
    descriptions: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path | None  # None: an unlabeled image (a folder of images/ without masks/)
    id: str


def _rasterio():
    try:
        import rasterio
    except ImportError as error:  # the optional `geo` extra
        raise ImportError("Reading GeoTIFFs needs rasterio: pip install 's5-hf[geo]'.") from error
    return rasterio


@contextlib.contextmanager
def _open_geotiff(path: Path):
    """The rasterio dataset of `path` (no warning for files without georeferencing); read errors inside the block
    become a DataFileError naming the file."""
    rasterio = _rasterio()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                yield src
    except rasterio.errors.RasterioError as error:
        raise DataFileError(path, f"cannot read the GeoTIFF ({error})") from None


def _is_geotiff(path: Path) -> bool:
    return path.suffix.lower() in GEOTIFF_SUFFIXES


def _selected(path: Path, bands, count: int, descriptions) -> list[int]:
    """0-based indices of the `bands` selection (`s5_hf.data.images.parse_bands`) in `path`."""
    try:
        return resolve_bands(bands, count, descriptions)
    except BandSelectionError as error:
        raise DataFileError(path, str(error)) from None


def _pil_descriptions(image: Image.Image) -> tuple[str | None, ...]:
    return tuple(PIL_BAND_DESCRIPTIONS.get(b) for b in image.getbands() if b != "A" or image.mode == "LA")


def raster_info(path: str | os.PathLike, bands=None) -> RasterInfo:
    """The header of an image or mask file, without reading its pixels; with `bands` (numbers or descriptions),
    of the selected bands only."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "file not found")
    if _is_geotiff(path):
        with _open_geotiff(path) as src:
            names = raster_band_names(src.descriptions, src.colorinterp)
            chosen = _selected(path, bands, src.count, names)
            dtypes = {src.dtypes[b] for b in chosen}
            if len(dtypes) != 1:
                raise DataFileError(path, f"bands of different dtypes {sorted(dtypes)}")
            return RasterInfo(path, src.height, src.width, len(chosen), src.dtypes[chosen[0]],
                              src.crs.to_wkt() if src.crs else None, src.nodata, tuple(names[b] for b in chosen))
    try:
        with Image.open(path) as image:
            bits, _ = stored_format(image)
            mode, size, descriptions = image.mode, image.size, _pil_descriptions(image)
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as error:
        raise DataFileError(path, f"cannot decode the image ({error})") from None
    if mode not in _PIL_DTYPES or (bits > 8 and mode in ("RGB", "RGBA")):
        raise DataFileError(path, f"unsupported pixel format: {bits}-bit mode {mode!r}; store multi-band or 16-bit "
                                  "imagery as GeoTIFF (read exactly through rasterio)")
    dtype, count = _PIL_DTYPES[mode]
    if mode == "RGBA":
        count = 3  # the alpha band is a validity mask, not data
    if mode == "P":  # read as its colours (read_image converts palette images to RGB)
        count, descriptions = 3, ("red", "green", "blue")
    chosen = _selected(path, bands, count, descriptions)
    return RasterInfo(path, size[1], size[0], len(chosen), dtype, descriptions=tuple(descriptions[b] for b in chosen))


def read_image(path: str | os.PathLike, nodata: float | None = None, bands=None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (H, W, C) in the file's dtype, nodata (H, W) bool) of an image file; with `bands` (1-based numbers
    or band descriptions, see `s5_hf.data.images.parse_bands`), of those bands in that order.

    `nodata` overrides the file's declared nodata value; a pixel is nodata when every band equals it (NaN: is
    NaN), or, for RGBA PNGs, when alpha is 0. NaN nodata pixels are set to 0; any other NaN is an error."""
    path = Path(path)
    alpha = None
    if _is_geotiff(path):
        with _open_geotiff(path) as src:
            chosen = _selected(path, bands, src.count, raster_band_names(src.descriptions, src.colorinterp))
            pixels = src.read([b + 1 for b in chosen]).transpose(1, 2, 0)
            declared = src.nodata
    else:
        image = open_image(path)
        if image.mode == "P":
            image = image.convert("RGB")
        if image.mode == "RGBA":
            alpha = np.asarray(image)[..., 3]
            image = image.convert("RGB")
        descriptions = _pil_descriptions(image)
        pixels = np.asarray(image)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if bands is not None:
            pixels = pixels[..., _selected(path, bands, pixels.shape[2], descriptions)]
        declared = None
    value = declared if nodata is None else nodata
    invalid = np.zeros(pixels.shape[:2], dtype=bool)
    if value is not None:
        invalid = np.isnan(pixels).all(axis=2) if math.isnan(value) else (pixels == value).all(axis=2)
    if alpha is not None:
        invalid |= alpha == 0
    if np.issubdtype(pixels.dtype, np.floating):
        bad = ~np.isfinite(pixels) & ~invalid[..., None]
        if bad.any():
            rows, cols = np.nonzero(bad.any(axis=2))
            raise DataFileError(path, f"{int(bad.sum())} NaN/Inf values (first at row {rows[0]}, column {cols[0]}) "
                                      "that are not declared nodata; declare them with --nodata nan or fill them")
        if invalid.any():
            pixels = np.where(invalid[..., None], 0, pixels).astype(pixels.dtype)
    return pixels, invalid


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """((H, W) int64 raw values, (H, W) bool nodata of a GeoTIFF mask or None) of a single-band mask file."""
    path = Path(path)
    if _is_geotiff(path):
        with _open_geotiff(path) as src:
            if src.count != 1:
                raise DataFileError(path, f"a mask must have one band of class ids, this one has {src.count}")
            values, nodata = src.read(1), src.nodata
        if not np.issubdtype(values.dtype, np.integer):
            raise DataFileError(path, f"mask dtype {values.dtype}: class ids must be integers")
        return values.astype(np.int64), (values == nodata) if nodata is not None else None
    image = open_image(path)
    if image.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B"):
        raise DataFileError(path, f"mask mode {image.mode!r}: a mask must be a single band of class ids "
                                  "(convert colour-coded masks to ids first)")
    return np.asarray(image).astype(np.int64), None


def mask_value_problem(values: np.ndarray, num_classes: int, ignore_index: int) -> str | None:
    """What is wrong with mask `values` for a task of `num_classes` classes and `ignore_index`, or None. VOID (255,
    the padding of every reader and augmentation) is always allowed."""
    values = np.asarray(values)
    bad = (values < 0) | ((values >= num_classes) & (values != ignore_index) & (values != VOID_ID))
    if not bad.any():
        return None
    found, counts = np.unique(values[bad], return_counts=True)
    listed = ", ".join(f"{v} ({c} px)" for v, c in zip(found[:10], counts[:10]))
    return f"mask value(s) {listed} outside the classes 0..{num_classes - 1} and the ignore index {ignore_index}"


class CheckedMasks:
    """Wraps a row transform: every row's mask is checked against the task's classes first (for shard and Hub
    sources of a user's task, whose values no reader has checked); the error names the source and the row id."""

    def __init__(self, transform, num_classes: int, ignore_index: int, source: str):
        self.transform, self.num_classes, self.ignore_index, self.source = transform, num_classes, ignore_index, source

    def __call__(self, row, generator=None):
        problem = mask_value_problem(np.asarray(row["mask"]), self.num_classes, self.ignore_index)
        if problem:
            raise ValueError(f"{self.source}: sample {row.get('id')!r}: {problem}.")
        return self.transform(row, generator=generator)


def _stems(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in SUFFIXES:
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in found:
            raise DataFileError(path, f"two files with the stem {stem!r} ({found[stem].name} and {path.name})")
        found[stem] = path
    return found


def _folder_pairs(folder: Path) -> list[Pair]:
    if not (folder / "masks").is_dir():  # unlabeled images
        return [Pair(path, None, stem) for stem, path in _stems(folder / "images").items()]
    images, masks = _stems(folder / "images"), _stems(folder / "masks")
    for stem, path in images.items():
        if stem not in masks:
            raise DataFileError(path, f"no mask for this image (expected {folder / 'masks' / stem}.<tif|png|...>)")
    for stem, path in masks.items():
        if stem not in images:
            raise DataFileError(path, f"no image for this mask (expected {folder / 'images' / stem}.<tif|png|...>)")
    return [Pair(images[s], masks[s], s) for s in images]


def _csv_pairs(path: Path) -> dict[str, list[Pair]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise DataFileError(path, f"missing column(s) {sorted(missing)}; a pairs CSV needs 'image' and 'mask'")
        splits: dict[str, list[Pair]] = {}
        for line, row in enumerate(reader, start=2):
            image, mask = path.parent / row["image"].strip(), path.parent / row["mask"].strip()
            split = (row.get("split") or "all").strip().lower() or "all"
            if not image.is_file() or not mask.is_file():
                raise DataFileError(path, f"line {line}: {image if not image.is_file() else mask} does not exist")
            splits.setdefault(split, []).append(Pair(image, mask, Path(row["image"].strip()).with_suffix("").as_posix()))
    return splits


def find_pairs(location: str | os.PathLike) -> dict[str, list[Pair]]:
    """The pairs of each split found at `location` (``"all"`` when the layout gives no split)."""
    location = Path(location)
    if location.is_file() and location.suffix.lower() == ".csv":
        return _csv_pairs(location)
    if (location / "images").is_dir():
        return {"all": _folder_pairs(location)}
    split_folders = {s: location / s for s in ("train", "val") if (location / s / "images").is_dir()}
    if split_folders:
        return {s: _folder_pairs(folder) for s, folder in split_folders.items()}
    tables = sorted(location.glob("*.csv")) if location.is_dir() else []
    if len(tables) == 1:
        return _csv_pairs(tables[0])
    raise FileNotFoundError(f"{location}: no labeled pairs found: expected images/ + masks/, train/{{images,masks}}, "
                            "or one CSV with 'image' and 'mask' columns.")


def is_labeled_folder(location: str | os.PathLike) -> bool:
    location = Path(location)
    if location.is_file():
        return location.suffix.lower() == ".csv"
    return (location / "images").is_dir() or (location / "train" / "images").is_dir()


def read_id2label(path: str | os.PathLike) -> dict[int, str]:
    """An ``id2label.json`` ({"0": "background", ...}, the transformers segmentation examples' format)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the class names ({error}).") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{path}: class names must be a JSON object {{"0": "background", ...}}.')
    try:
        id2label = {int(k): str(v) for k, v in data.items()}
    except ValueError:
        raise ValueError(f"{path}: class ids must be integers, got {sorted(data)}.") from None
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"{path}: class ids must be 0..K-1 without gaps, got {sorted(id2label)}.")
    return id2label


class LabeledFolder:
    """The pairs at `location` as splits; see the module docstring. `id2label` falls back to the folder's
    ``id2label.json``. `bands` selects and orders the image bands (``"4,3,2"``, ``"red,green,blue"`` or a
    sequence; names are each file's GeoTIFF band descriptions), as `s5-segment --bands` does."""

    def __init__(self, location: str | os.PathLike, name: str = "data", *, id2label: Mapping | None = None,
                 ignore_index: int = VOID_ID, nodata: float | None = None, validation_split: float | None = None,
                 split_seed: int = 0, bands=None):
        self.location, self.name = Path(location), name
        self.bands = parse_bands(bands)
        if id2label is None:
            root = self.location.parent if self.location.is_file() else self.location
            if (root / "id2label.json").is_file():
                id2label = read_id2label(root / "id2label.json")
        self.id2label = None if id2label is None else {int(k): str(v) for k, v in id2label.items()}
        self.ignore_index, self.nodata = int(ignore_index), nodata
        if self.id2label is not None and 0 <= self.ignore_index < len(self.id2label):
            raise ValueError(f"{name}: ignore index {self.ignore_index} is a class id; use one outside 0.."
                             f"{len(self.id2label) - 1}.")
        found = find_pairs(self.location)
        if "val" not in found and validation_split is not None:
            from .registry import heldout_ids

            pool = found.pop("all", []) + found.pop("train", [])
            held = heldout_ids([p.id for p in pool], validation_split, split_seed)
            found = {"train": [p for p in pool if p.id not in held], "val": [p for p in pool if p.id in held]}
        elif "val" in found and validation_split is not None:
            raise ValueError(f"{name}={location}: the data already has a val split; drop --validation_split.")
        if "all" in found:
            found.setdefault("train", []).extend(found.pop("all"))
        self.splits = found
        self._checked: RasterInfo | None = None

    @property
    def unlabeled(self) -> list[Pair]:
        """The images without a mask (all of them for images/ without masks/; none otherwise)."""
        return [p for pairs in self.splits.values() for p in pairs if p.mask is None]

    def pairs(self, split: str) -> list[Pair]:
        out = []
        for part in split.split("+"):
            if part not in self.splits:
                hint = " (hold out part of train with --validation_split FRACTION)" if part == "val" else ""
                raise ValueError(f"{self.name}={self.location}: no split {part!r}; splits: {sorted(self.splits)}{hint}.")
            out += self.splits[part]
        return out

    def check(self) -> RasterInfo:
        """Headers of every pair of every split: image and mask agree in size (and CRS); band count and dtype are
        the same across the dataset. Returns the first image's header (the dataset's bands and dtype)."""
        if self._checked is not None:
            return self._checked
        first: RasterInfo | None = None
        for pair in (p for pairs in self.splits.values() for p in pairs):
            image = raster_info(pair.image, self.bands)
            if image.dtype not in SUPPORTED_DTYPES:
                raise DataFileError(pair.image, f"dtype {image.dtype} is not supported ({', '.join(SUPPORTED_DTYPES)})")
            mask = image if pair.mask is None else raster_info(pair.mask)
            if (image.height, image.width) != (mask.height, mask.width):
                raise DataFileError(pair.mask, f"mask is {mask.height}x{mask.width} but its image {pair.image} is "
                                               f"{image.height}x{image.width}")
            if image.crs and mask.crs and image.crs != mask.crs:
                raise DataFileError(pair.mask, f"mask CRS differs from its image {pair.image}'s CRS")
            if first is None:
                first = image
            elif (image.bands, image.dtype) != (first.bands, first.dtype):
                raise DataFileError(pair.image, f"{image.bands} band(s) of {image.dtype}, but {first.path} has "
                                                f"{first.bands} of {first.dtype}: a dataset needs one band layout")
        if first is None:
            raise ValueError(f"{self.name}={self.location}: no image/mask pairs found.")
        self._checked = first
        return first

    def read(self, pair: Pair) -> dict[str, Any]:
        """One row (see the module docstring); mask values are checked against the classes."""
        if self.id2label is None:
            raise ValueError(f"{self.name}={self.location}: class names unknown: pass --labels {self.name}="
                             "id2label.json or put an id2label.json in the folder.")
        if pair.mask is None:
            raise DataFileError(pair.image, f"no mask: {self.location} holds unlabeled images (images/ without "
                                            "masks/), usable only as unlabeled data (S4P --unlabeled)")
        pixels, invalid = read_image(pair.image, self.nodata, self.bands)
        values, mask_nodata = read_mask(pair.mask)
        if values.shape != pixels.shape[:2]:
            raise DataFileError(pair.mask, f"mask is {values.shape[0]}x{values.shape[1]} but its image "
                                           f"{pair.image} is {pixels.shape[0]}x{pixels.shape[1]}")
        if mask_nodata is not None:
            invalid = invalid | mask_nodata
        problem = mask_value_problem(values[~invalid], len(self.id2label), self.ignore_index)
        if problem:
            raise DataFileError(pair.mask, problem)
        values[invalid] = self.ignore_index
        mask = values.astype(np.uint8 if self.ignore_index <= 255 else np.int32)
        image: Any = pixels
        if pixels.dtype == np.uint8 and pixels.shape[2] == 3:
            image = Image.fromarray(pixels, mode="RGB")
        return {"image": image, "mask": mask, "id": pair.id, "source": self.name}

    def iter_images(self, split: str) -> Iterator[tuple[Pair, np.ndarray, np.ndarray]]:
        """(pair, pixels (H, W, C), valid (H, W) bool) of every image of `split`, for statistics passes."""
        for pair in self.pairs(split):
            pixels, invalid = read_image(pair.image, self.nodata, self.bands)
            yield pair, pixels, ~invalid

    def read_image_row(self, pair: Pair) -> dict[str, Any]:
        """One row without its mask, for unlabeled use: ``image`` (as `read`), ``valid`` ((H, W) bool, False where
        the image is nodata), ``id``, ``source``. The mask is neither read nor checked (no classes needed)."""
        pixels, invalid = read_image(pair.image, self.nodata, self.bands)
        image: Any = pixels
        if pixels.dtype == np.uint8 and pixels.shape[2] == 3:
            image = Image.fromarray(pixels, mode="RGB")
        return {"image": image, "valid": ~invalid, "id": pair.id, "source": self.name}

    def load(self, split: str, images_only: bool = False) -> datasets.IterableDataset:
        """The rows of `split`, streamed; one shard per pair (so processes split and shuffle by file). With
        `images_only`, `read_image_row`'s rows (S4P's unlabeled stream from a folder: its masks are ignored)."""
        self.check()
        pairs = self.pairs(split)
        return datasets.IterableDataset.from_generator(_generate, gen_kwargs={"pairs": pairs, "folder": self,
                                                                              "images_only": images_only})


def _generate(pairs: list[Pair], folder: LabeledFolder, images_only: bool = False):
    for pair in pairs:
        yield folder.read_image_row(pair) if images_only else folder.read(pair)


__all__ = ["CheckedMasks", "LabeledFolder", "Pair", "RasterInfo", "find_pairs", "is_labeled_folder",
           "mask_value_problem", "raster_info", "read_id2label", "read_image", "read_mask"]
