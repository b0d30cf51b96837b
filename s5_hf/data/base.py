"""What every benchmark reader shares: the output columns, patching, error policy and `datasets` plumbing.

A reader lists the *tiles* of a split (one image file and its label file each), knows how to turn its label
files into class ids, and inherits the rest: the rows are produced by one generator, for a map-style
`datasets.Dataset` (written once to the `datasets` cache, Arrow on disk, decoded lazily on access) or a
streaming `datasets.IterableDataset` (nothing cached; one tile in memory at a time; the tile list is what
`datasets` shards over DataLoader workers and `split_dataset_by_node` ranks).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import datasets
import numpy as np

from ..label_sets import LabelSet, get_label_set
from .images import DataFileError, encode_png, read_rgb
from .patches import IMAGE_FILL, MASK_FILL, cut_patch, patch_id, patch_windows

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES = ("raise", "skip")


def segmentation_features() -> datasets.Features:
    """The columns of every reader's output: ``image`` (RGB), ``mask`` (mode "L" class ids, 255 = void;
    None where a split has no labels), ``source`` (dataset name) and ``id`` (stable, unique in the split)."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "source": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )


@dataclass(frozen=True)
class Tile:
    """One image file of a split and its label file (None for splits published without labels)."""

    id: str
    image: Path
    mask: Path | None
    #: (size, mtime) of the files: part of the map-style cache fingerprint, so edited files are re-read.
    stamp: tuple[int, ...] = ()


def file_stamp(*paths: Path | None) -> tuple[int, ...]:
    stamp: list[int] = []
    for path in paths:
        if path is not None:
            stat = path.stat()
            stamp += [stat.st_size, stat.st_mtime_ns]
    return tuple(stamp)


def missing_files_error(name: str, missing: list[Path], layout: str) -> FileNotFoundError:
    """One error for every missing file of a split (the first ten listed), with the expected layout."""
    listed = "\n  ".join(str(path) for path in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    return FileNotFoundError(
        f"{name}: {len(missing)} expected file(s) missing:\n  {listed}{more}\nExpected layout:\n{layout}"
    )


class BenchmarkReader:
    """Base class of the readers: a dataset root in its owner's layout -> `datasets` rows.

    Args:
        root: the dataset root, laid out as the owner distributes it (see each reader's `layout`).
        patch_size: side of the square patches to cut; None for whole images; ``"auto"`` (default) for the
            reader's default for the split (`train_patch` / `eval_patch`).
        stride: step between patches; defaults to the reader's default with ``"auto"``, else `patch_size`.
        on_error: what a damaged sample (unreadable/truncated file, unknown label value, image and label of
            different sizes) does: ``"raise"`` (default) stops with a `DataFileError` naming the file;
            ``"skip"`` drops the whole image and reports it: a warning per image with a running count, a
            summary after the last image of the split, and a JSON line in `skip_log` if given (the one
            record that spans DataLoader worker processes). With the map-style dataset this happens once,
            when the cache is built.
        skip_log: file to which every skipped image is appended as ``{"source", "id", "file", "reason"}``.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    #: Split used for validation/test scores in the S5 protocol.
    eval_split: ClassVar[str]
    #: Expected layout, shown in missing-file errors.
    layout: ClassVar[str]
    #: (patch_size, stride) by default for the training split and for the others; None = whole images.
    train_patch: ClassVar[tuple[int, int] | None] = None
    eval_patch: ClassVar[tuple[int, int] | None] = None
    #: Dataset card defaults.
    license: ClassVar[str] = "other"
    license_note: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        patch_size: int | None | Literal["auto"] = "auto",
        stride: int | None = None,
        on_error: OnError = "raise",
        skip_log: str | os.PathLike | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.name}: dataset root {self.root} does not exist. Expected layout:\n{self.layout}"
            )
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        if patch_size != "auto" and patch_size is not None and (not isinstance(patch_size, int) or patch_size <= 0):
            raise ValueError(f"patch_size must be a positive int, None or 'auto', got {patch_size!r}")
        if stride is not None and (not isinstance(stride, int) or stride <= 0):
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.patch_size = patch_size
        self.stride = stride
        self.on_error = on_error
        self.skip_log = Path(skip_log) if skip_log is not None else None
        #: Ids of the images skipped by this reader object (in this process).
        self.skipped: list[str] = []

    # -- what each reader provides -------------------------------------------------------------------------

    def tiles(self, split: str) -> list[Tile]:
        """The tiles of `split`, in a fixed order; raises FileNotFoundError listing every missing file."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> np.ndarray:
        """Class ids (H, W) uint8 of a label file, in the label set's ids (255 = void)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.name)

    def check_split(self, split: str) -> str:
        """The lower-case split name; ``a+b`` joins splits (e.g. LoveDA ``train+val``, as S5 trains it)."""
        key = split.lower()
        for part in key.split("+"):
            if part not in self.splits:
                raise ValueError(f"{self.name} has no split {part!r}; valid splits: {', '.join(self.splits)}")
        return key

    def split_tiles(self, split: str) -> list[Tile]:
        """The tiles of a split, or of the splits joined by ``+``, in order."""
        return [tile for part in self.check_split(split).split("+") for tile in self.tiles(part)]

    def patching(self, split: str) -> tuple[int, int] | None:
        """(patch_size, stride) used for `split`, or None for whole images."""
        if self.patch_size == "auto":
            default = self.train_patch if "train" in split.split("+") else self.eval_patch
            if default is None or self.stride is None:
                return default
            return default[0], self.stride
        if self.patch_size is None:
            return None
        return self.patch_size, self.stride or self.patch_size

    def load(
        self,
        split: str,
        *,
        streaming: bool = False,
        cache_dir: str | os.PathLike | None = None,
        num_proc: int | None = None,
    ) -> datasets.Dataset | datasets.IterableDataset:
        """The rows of `split` as a map-style `Dataset` (cached as Arrow in `cache_dir`, default the
        `datasets` cache) or, with `streaming=True`, an `IterableDataset` read on the fly."""
        split = self.check_split(split)
        tiles = self.split_tiles(split)
        if not tiles:
            raise FileNotFoundError(
                f"{self.name} {split}: no images found under {self.root}. Expected layout:\n{self.layout}"
            )
        duplicates = sorted(tile_id for tile_id, count in Counter(tile.id for tile in tiles).items() if count > 1)
        if duplicates:
            raise ValueError(f"{self.name} {split}: several images share the id(s) {duplicates[:10]}")
        gen_kwargs = {"tiles": tiles, "reader": self, "patching": self.patching(split), "last_id": tiles[-1].id}
        features = segmentation_features()
        named_split = datasets.NamedSplit(split.replace("+", "_"))  # `datasets` split names allow no "+"
        if streaming:
            return datasets.IterableDataset.from_generator(
                generate_rows, features=features, gen_kwargs=gen_kwargs, split=named_split
            )
        try:
            return datasets.Dataset.from_generator(
                generate_rows,
                features=features,
                gen_kwargs=gen_kwargs,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                num_proc=num_proc,
                split=named_split,
            )
        except datasets.exceptions.DatasetGenerationError as error:
            # `datasets` hides the reason behind "An error occurred while generating the dataset".
            cause = error.__cause__
            if isinstance(cause, DataFileError):
                raise DataFileError(cause.path, cause.problem) from error
            raise

    def report_skip(self, tile: Tile, error: DataFileError) -> None:
        self.skipped.append(tile.id)
        logger.warning(
            "%s: skipped %s: %s (%d skipped so far in this process)", self.name, tile.id, error, len(self.skipped)
        )
        if self.skip_log is not None:
            record = {"source": self.name, "id": tile.id, "file": str(error.path), "reason": error.problem}
            with open(self.skip_log, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def read_tile(tile: Tile, reader: BenchmarkReader) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """(image pixels, image file is plain RGB, class ids or None) of a tile, sizes checked."""
    image, unchanged = read_rgb(tile.image)
    if tile.mask is None:
        return image, unchanged, None
    mask = reader.read_mask(tile.mask)
    if mask.shape != image.shape[:2]:
        raise DataFileError(
            tile.mask,
            f"label is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {tile.image} is "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    return image, unchanged, mask


def generate_rows(
    tiles: list[Tile], reader: BenchmarkReader, patching: tuple[int, int] | None, last_id: str
) -> Iterator[dict]:
    """The rows of a list of tiles: whole images or their patches, encoded as the Image feature stores them.

    `datasets` calls this once per shard of `tiles` (one tile each when streaming), so skipped images are
    counted on the reader, per process; the summary is logged after the split's last tile (`last_id`).
    """
    for tile in tiles:
        try:
            image, unchanged, mask = read_tile(tile, reader)
        except DataFileError as error:
            if reader.on_error == "raise":
                raise
            reader.report_skip(tile, error)
            image = None
        if image is not None:
            yield from tile_rows(tile, reader.name, image, unchanged, mask, patching)
        if tile.id == last_id and reader.skipped:
            logger.warning(
                "%s: %d image(s) skipped so far in this process: %s",
                reader.name,
                len(reader.skipped),
                ", ".join(reader.skipped),
            )


def tile_rows(
    tile: Tile,
    source: str,
    image: np.ndarray,
    unchanged: bool,
    mask: np.ndarray | None,
    patching: tuple[int, int] | None,
) -> Iterator[dict]:
    if patching is None:
        # Whole images keep their original file bytes when the file already is plain RGB.
        image_bytes = tile.image.read_bytes() if unchanged else encode_png(image)
        yield make_row(source, tile.id, image_bytes, mask)
        return
    patch_size, stride = patching
    for top, left in patch_windows(image.shape[0], image.shape[1], patch_size, stride):
        patch = cut_patch(image, top, left, patch_size, IMAGE_FILL)
        patch_mask = None if mask is None else cut_patch(mask, top, left, patch_size, MASK_FILL)
        yield make_row(source, patch_id(tile.id, top, left), encode_png(patch), patch_mask)


def make_row(source: str, sample_id: str, image_bytes: bytes, mask: np.ndarray | None) -> dict:
    return {
        "image": {"bytes": image_bytes, "path": None},
        "mask": None if mask is None else {"bytes": encode_png(mask), "path": None},
        "source": source,
        "id": sample_id,
    }


__all__ = [
    "BenchmarkReader",
    "ON_ERROR_CHOICES",
    "Tile",
    "file_stamp",
    "generate_rows",
    "missing_files_error",
    "segmentation_features",
]
