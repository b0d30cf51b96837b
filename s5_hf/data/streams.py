"""Training and evaluation streams: any dataset source -> per-process, endless, resumable batches.

A source is named on the command line as ``NAME=LOCATION`` (or just ``LOCATION``):

- a benchmark in its owner's layout (``vaihingen=/data/Vaihingen``): read with `load_benchmark`, streamed;
- a folder of Parquet shards written by `to_parquet_shards` or the RS4P export (``rs4p=/data/rs4p``);
- a Hub dataset id (``rs4p=s5/rs4p-1m``), streamed with `datasets.load_dataset`;
- a user's labeled dataset: a folder of image/mask pairs (``images/`` + ``masks/``, optional ``train/``/``val/``)
  or a CSV of pairs (``mycrops=/data/mycrops``), any bands and dtype, with nodata (`s5_hf.data.folders`). Its
  classes (`id2label`), ignore index, nodata value and validation fraction are fields of the `DataSource`.

Every process reads its own part (`datasets.distributed.split_dataset_by_node`: whole shards when the shard count
divides by the world size, every `world_size`-th row otherwise), so no sample is read twice or missed. A sample's
augmentation is drawn from a generator seeded by (seed, epoch, crc32 of its ``id``): independent of the process
count, the worker count and of resuming. Each stream cycles through epochs on its own (a smaller labeled set simply
restarts, as the official code repeats it), reshuffling with `set_epoch`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from ..configuration_s5 import S5Task
from ..label_sets import VOID_ID
from .folders import LabeledFolder, is_labeled_folder, read_id2label
from .shards import card_metadata, shard_features, shard_files
from .registry import BENCHMARKS, HELDOUT, TRAIN_MINUS_HELDOUT, load_benchmark, stage_splits
from ..training.augment import AugmentedDataset


@dataclass(frozen=True)
class DataSource:
    """A parsed ``NAME=LOCATION`` argument. `name` is the task (dataset head) the rows train; for benchmark
    layouts it also selects the reader."""

    name: str
    location: str
    #: Classes of a non-benchmark source ({id: name}); None: read from the data (folder ``id2label.json``).
    id2label: dict | None = None
    ignore_index: int = 255
    #: Nodata value of the images (folders; overrides the GeoTIFF's own); such pixels are ignored, never a class.
    nodata: float | None = None
    #: Fraction of a folder without a val split held out (seeded by `split_seed`) as "val".
    validation_split: float | None = None
    split_seed: int = 0
    #: Bands of a folder's images to use, by 1-based number or description (`s5_hf.data.images.parse_bands`).
    bands: tuple[int | str, ...] | None = None

    @classmethod
    def parse(cls, text: str, default_name: str | None = None) -> DataSource:
        name, sep, location = text.partition("=")
        if not sep:
            name, location = default_name or "", text
        name, location = name.strip().lower(), location.strip()
        if not name or not location:
            raise ValueError(f"Data source {text!r} must be NAME=LOCATION, e.g. vaihingen=/data/Vaihingen.")
        return cls(name, location)

    @property
    def kind(self) -> str:
        path = Path(self.location)
        if path.is_file() and path.suffix.lower() == ".csv":
            return "folder"
        if path.is_dir():
            if shard_files(path):
                return "shards"
            if self.name in BENCHMARKS:
                return "benchmark"
            if is_labeled_folder(path) or len(list(path.glob("*.csv"))) == 1:
                return "folder"
            raise ValueError(
                f"{self.location} holds no Parquet shards, and {self.name!r} is not a benchmark with a known layout "
                f"({', '.join(BENCHMARKS)}); nor does it hold image/mask pairs (images/ + masks/, train/ and val/ "
                "sub-folders, or one CSV of pairs)."
            )
        # Anything that is not an existing folder must look like a Hub id ("owner/name" or "name").
        if path.exists() or self.location.startswith((".", "/", "~")) or self.location.count("/") > 1:
            raise FileNotFoundError(f"Data source {self.name!r}: {self.location} is not a folder (nor a Hub id).")
        return "hub"

    def load(self, split: str, **options: Any) -> datasets.IterableDataset:
        """The rows of `split` as a streaming dataset (columns ``image``, optional ``mask``, ``id``, ...)."""
        kind = self.kind
        if kind == "benchmark":
            return load_benchmark(self.name, self.location, split, streaming=True, **options)
        if kind == "folder" and not options:
            return self.folder().load(split)
        if options:
            raise TypeError(f"Reader options {sorted(options)} apply to benchmark layouts, not to {kind} {self.location}.")
        if split in (HELDOUT, TRAIN_MINUS_HELDOUT):
            raise ValueError(f"Data source {self.name}={self.location}: the {split!r} split (training tiles held out "
                             f"for model selection) exists for benchmark layouts only; name a split of the {kind} "
                             "source instead (e.g. --validation_splits NAME=val).")
        try:
            dataset = datasets.load_dataset(self.location, split=split, streaming=True)
        except ValueError as error:  # datasets' "Unknown split" and similar
            raise ValueError(f"Data source {self.name}={self.location}: cannot load split {split!r}: {error}") from error
        return with_array_dtypes(dataset)


    def folder(self) -> LabeledFolder:
        """The labeled folder of a ``folder`` source, with this source's classes, nodata and validation split."""
        return LabeledFolder(self.location, self.name, id2label=self.id2label, ignore_index=self.ignore_index,
                             nodata=self.nodata, validation_split=self.validation_split, split_seed=self.split_seed,
                             bands=self.bands)

    def task(self) -> S5Task:
        """The model task (head) this source trains: a benchmark's, or one with the classes of `id2label` or of the
        data itself, first found of:

        1. an ``id2label.json`` in the folder (a folder source, or beside the shards: the transformers segmentation
           examples' file);
        2. ``id2label`` in a shard folder's dataset card metadata (`folder_to_shards` writes it, with
           ``ignore_index``, which applies unless this source's ignore index was set to another value than 255);
        3. a `datasets.ClassLabel` feature of the dataset (a shard folder's Parquet schema metadata or card
           ``dataset_info``; a Hub dataset's `load_dataset_builder(...).info.features`): see
           `class_names_from_features` for the rule."""
        if self.id2label is None and self.name in BENCHMARKS:
            return S5Task.parse(self.name)
        kind = self.kind
        folder = self.folder() if kind == "folder" else None
        if folder is not None and folder.unlabeled:
            raise ValueError(f"Data source {self.name}={self.location}: {folder.unlabeled[0].image} (and the folder's "
                             "other images) has no mask: a folder of images/ without masks/ is unlabeled data (S4P "
                             "--unlabeled), it cannot train a head.")
        id2label, ignore_index = self.id2label, self.ignore_index
        if id2label is None:
            if folder is not None:
                id2label = folder.id2label
            elif kind == "shards":
                table = Path(self.location) / "id2label.json"
                metadata = card_metadata(self.location)
                if table.is_file():
                    id2label = read_id2label(table)
                else:
                    id2label = card_id2label(self.location)
                    if id2label is None:
                        id2label = class_names_from_features(shard_features(self.location),
                                                             f"{self.name}={self.location}")
                if ignore_index == VOID_ID and isinstance(metadata.get("ignore_index"), int):
                    ignore_index = metadata["ignore_index"]
            elif kind == "hub":
                try:
                    features = hub_features(self.location)
                except (OSError, ValueError) as error:  # not found, offline, no access
                    raise ValueError(f"Data source {self.name}={self.location}: its classes are unknown and its "
                                     f"features could not be read ({error}): pass --labels {self.name}="
                                     "id2label.json.") from error
                id2label = class_names_from_features(features, f"{self.name}={self.location}")
        if id2label is None:
            raise ValueError(f"Data source {self.name}={self.location}: its classes are unknown: pass --labels "
                             f"{self.name}=id2label.json (a JSON object {{\"0\": \"background\", ...}}).")
        return S5Task.parse({"name": self.name, "id2label": id2label, "ignore_index": ignore_index})

    def default_splits(self) -> tuple[str, str, str]:
        """(training, model-selection, reported) split: see `s5_hf.data.registry.stage_splits` for benchmark
        layouts (ISPRS: the held-out training tiles select, the test split is reported); Parquet and Hub sources
        of a known benchmark use its evaluation split for both (name another with the scripts' split options),
        others "val"."""
        kind = self.kind
        if kind == "benchmark":
            return stage_splits(self.name)
        if kind == "folder" and "val" not in self.folder().splits:
            return "train", "", ""  # nothing to validate on (no val/ folder nor --validation_split)
        if (kind == "shards" and self.name not in BENCHMARKS
                and not any(f.name.startswith("val-") for f in shard_files(self.location))):
            return "train", "", ""  # a user's shards without a val split (e.g. `folder_to_shards` of train only)
        evaluation = BENCHMARKS[self.name].eval_split if self.name in BENCHMARKS else "val"
        return "train", evaluation, evaluation


def card_id2label(folder: str | os.PathLike) -> dict[int, str] | None:
    """``id2label`` from the YAML metadata of a shard folder's dataset card (README.md), if it declares one."""
    id2label = card_metadata(folder).get("id2label")
    return {int(k): str(v) for k, v in id2label.items()} if isinstance(id2label, dict) else None


def class_names_from_features(features: datasets.Features | Mapping | None, source: str = "data") -> dict | None:
    """{id: name} of the `datasets.ClassLabel` a dataset declares, or None.

    Rule: every ClassLabel in the features counts, whether a column is one or holds one inside lists (Sequence/List
    at any depth, e.g. a per-pixel mask of ClassLabel ids, or a ``label_names`` list) or a struct. They must all
    have the same names (a ValueError naming the columns otherwise: pass --labels); a ClassLabel without names
    (only a count) does not name classes and is skipped."""
    if not features:
        return None
    found: dict[str, tuple[str, ...]] = {}

    def walk(path: str, feature) -> None:
        if isinstance(feature, datasets.ClassLabel):
            if feature.names and not all(n == str(i) for i, n in enumerate(feature.names)):
                found[path] = tuple(feature.names)
        elif isinstance(feature, Mapping):
            for key, child in feature.items():
                walk(f"{path}.{key}" if path else key, child)
        elif isinstance(feature, (list, tuple)) and len(feature) == 1:
            walk(path, feature[0])
        elif hasattr(feature, "feature"):  # Sequence / List / LargeList
            walk(path, feature.feature)

    walk("", features)
    if not found:
        return None
    names = set(found.values())
    if len(names) > 1:
        listed = "; ".join(f"{column}: {list(value)}" for column, value in found.items())
        raise ValueError(f"{source}: its ClassLabel features name different classes ({listed}); pass --labels.")
    return dict(enumerate(next(iter(names))))


def hub_features(repo_id: str) -> datasets.Features | None:
    """The declared features of a Hub dataset (its builder's info: the card's ``dataset_info`` or the Parquet
    metadata), read without downloading the data."""
    return datasets.load_dataset_builder(repo_id).info.features


def _array_dtypes(row: dict, dtypes: dict[str, str]) -> dict:
    return {name: np.asarray(row[name], dtype=dtype) for name, dtype in dtypes.items() if row[name] is not None}


def with_array_dtypes(dataset: datasets.IterableDataset) -> datasets.IterableDataset:
    """Array2D/3D/4D columns (N-band images, masks of `folder_to_shards`) as NumPy arrays of their declared dtype,
    not the nested lists a stream yields (a 16-bit image must reach the processor as uint16)."""
    features = dataset.features
    dtypes = {name: feature.dtype for name, feature in (features or {}).items()
              if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D))}
    return dataset.map(functools.partial(_array_dtypes, dtypes=dtypes)) if dtypes else dataset


def process_part(dataset: datasets.IterableDataset, rank: int, world_size: int) -> datasets.IterableDataset:
    """This process's part of a streaming dataset (no duplicates, nothing missed)."""
    return dataset if world_size == 1 else split_dataset_by_node(dataset, rank=rank, world_size=world_size)


class TrainStream:
    """Endless batches of one training source, with a position that `accelerate` checkpoints.

    Args:
        dataset: this process's part (see `process_part`), streaming.
        transform: `LabeledTransform` / `UnlabeledTransform` (called as ``transform(row, generator=...)``).
        batch_size: per process; incomplete batches at the end of an epoch are dropped (BatchNorm needs full ones).
        seed: shuffling and augmentation seed; use different seeds for two views of one source.
        shuffle_buffer: rows in the shuffle buffer (shard order is shuffled too); 0 keeps the stored order.
        num_workers: DataLoader workers (each reads whole shards).
        name: for messages.

    `state_dict()` is (epoch, batches served in that epoch). On resume the stream replays the epoch's order and
    skips that many batches, so the next batch is the one an uninterrupted run would have drawn (skipped batches
    are still read and augmented: resuming late in a long epoch takes time).
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        transform: Callable,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        num_workers: int = 0,
        name: str = "data",
    ):
        if batch_size < 1:
            raise ValueError(f"{name}: batch size must be >= 1, got {batch_size}.")
        self.dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 0 else dataset
        self.transform, self.batch_size, self.seed = transform, batch_size, seed
        self.num_workers, self.name = num_workers, name
        self.epoch, self.batches_in_epoch = 0, 0
        self._iterator: Iterator | None = None

    def _loader(self) -> torch.utils.data.DataLoader:
        # A private generator: creating an iterator must not consume the global RNG, which dropout and drop path
        # use; otherwise a resumed run (which creates its iterators at a different moment) would diverge.
        return torch.utils.data.DataLoader(
            AugmentedDataset(self.dataset, self.transform, self.seed, self.epoch),
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _start_epoch(self, skip: int) -> None:
        self._iterator = iter(self._loader())
        for index in range(skip):
            if next(self._iterator, None) is None:
                raise RuntimeError(f"{self.name}: cannot resume at batch {skip} of epoch {self.epoch}: the epoch has "
                                   f"only {index} batches now (did the data change since the checkpoint?).")

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self):
        if self._iterator is None:
            self._start_epoch(self.batches_in_epoch)
        batch = next(self._iterator, None)
        if batch is None:
            if self.batches_in_epoch == 0:
                raise ValueError(
                    f"{self.name}: no full batch of {self.batch_size} in an epoch: this process's part of the data "
                    f"has fewer than {self.batch_size} samples (empty dataset, or too few rows for the process count)."
                )
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
            self._start_epoch(0)
            batch = next(self._iterator)
        self.batches_in_epoch += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        self._iterator = None


__all__ = ["DataSource", "TrainStream", "card_id2label", "class_names_from_features", "hub_features",
           "process_part", "read_id2label", "with_array_dtypes"]
