"""`load_benchmark`: one entry point for every benchmark reader, by dataset name, and the splits each stage uses.

Model selection must not look at the split a benchmark reports. The ISPRS benchmarks publish only train and test,
so by default a held-out part of the training tiles selects the model (`HELDOUT` = ``"heldout"``; training then
reads `TRAIN_MINUS_HELDOUT` = ``"train_minus_heldout"``) and the test split is scored once, at the end, as test.
The held-out tiles are a fixed function of the tile names: sorted by crc32 of ``"<heldout_seed>:<tile id>"``,
the first ``max(1, round(heldout_fraction * tiles))`` (defaults 1/8 and seed 0: Vaihingen 2 of 16 tiles,
Potsdam 3 of 24), so every run, process and worker agrees on them. Benchmarks with a validation split (LoveDA,
OpenEarthMap, iSAID) select on it and report it, as the paper does.
"""

from __future__ import annotations

import inspect
import os
import zlib

import datasets

from .base import BenchmarkReader
from .isaid import ISAIDReader
from .isprs import PotsdamReader, VaihingenReader
from .loveda import LoveDAReader
from .openearthmap import OpenEarthMapReader

#: Reader class of each benchmark, by the name used everywhere (label sets, task heads, `source` column).
BENCHMARKS: dict[str, type[BenchmarkReader]] = {
    reader.name: reader for reader in (VaihingenReader, PotsdamReader, LoveDAReader, OpenEarthMapReader, ISAIDReader)
}

# Options of `BenchmarkReader.load`; every other option goes to the reader's constructor.
_LOAD_OPTIONS = ("cache_dir", "num_proc")
# Options of the held-out part of the training split (see the module docstring).
_HELDOUT_OPTIONS = {"heldout_fraction": 0.125, "heldout_seed": 0}
HELDOUT = "heldout"
TRAIN_MINUS_HELDOUT = "train_minus_heldout"


def heldout_ids(tile_ids: list[str], fraction: float = 0.125, seed: int = 0) -> set[str]:
    """The tiles (ids) held out of a training split for model selection: a seeded, fixed choice by name."""
    if not 0 < fraction < 1:
        raise ValueError(f"heldout_fraction must be between 0 and 1 (exclusive), got {fraction!r}.")
    if len(tile_ids) < 2:
        raise ValueError(f"Cannot hold out part of a training split of {len(tile_ids)} tile(s) for model selection; "
                         "name a validation split explicitly.")
    count = min(max(1, round(fraction * len(tile_ids))), len(tile_ids) - 1)
    ranked = sorted(tile_ids, key=lambda tile_id: (zlib.crc32(f"{seed}:{tile_id}".encode()), tile_id))
    return set(ranked[:count])


class _HeldoutSplits:
    """Mixed into every reader: the pseudo-splits `HELDOUT` (scored like the reader's evaluation split: whole
    tiles for ISPRS) and `TRAIN_MINUS_HELDOUT` (patched like the training split)."""

    heldout_fraction: float = _HELDOUT_OPTIONS["heldout_fraction"]
    heldout_seed: int = _HELDOUT_OPTIONS["heldout_seed"]

    def check_split(self, split: str) -> str:
        key = split.lower()
        return key if key in (HELDOUT, TRAIN_MINUS_HELDOUT) else super().check_split(split)

    def tiles(self, split: str):
        if split not in (HELDOUT, TRAIN_MINUS_HELDOUT):
            return super().tiles(split)
        train = super().tiles("train")
        held = heldout_ids([tile.id for tile in train], self.heldout_fraction, self.heldout_seed)
        return [tile for tile in train if (tile.id in held) == (split == HELDOUT)]

    def patching(self, split: str):
        if split == HELDOUT:
            return super().patching(self.eval_split)
        return super().patching("train" if split == TRAIN_MINUS_HELDOUT else split)


# Module-level classes (not made per call), so that readers pickle into DataLoader workers and `datasets` caches.
_READERS_WITH_HELDOUT: dict[str, type[BenchmarkReader]] = {}
for _name, _reader in BENCHMARKS.items():
    _class = type(_reader.__name__, (_HeldoutSplits, _reader), {"__module__": __name__,
                                                                "__qualname__": f"_Heldout{_reader.__name__}"})
    globals()[_class.__qualname__] = _READERS_WITH_HELDOUT[_name] = _class


def stage_splits(name: str) -> tuple[str, str, str]:
    """(training, model-selection, reported) split of benchmark `name` in its owner's layout, by default."""
    reader = get_reader(name)
    if "val" in reader.splits:
        return "train", "val", reader.eval_split
    return TRAIN_MINUS_HELDOUT, HELDOUT, reader.eval_split


def get_reader(name: str) -> type[BenchmarkReader]:
    """The reader class of benchmark `name` (case-insensitive); the error lists the valid names."""
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}. Valid names: {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[key]


def _reader_options(reader: type[BenchmarkReader]) -> list[str]:
    names: list[str] = []
    for cls in reader.__mro__:
        if "__init__" in vars(cls):
            names += [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "kwargs")]
    return sorted(set(names))


def load_benchmark(
    name: str, root: str | os.PathLike, split: str, streaming: bool = False, **options
) -> datasets.Dataset | datasets.IterableDataset:
    """Read benchmark `name` from `root` (its owner's layout) as a `datasets` dataset.

    Columns: ``image`` (RGB Image), ``mask`` (Image, mode "L", class ids, 255 = void; None for unlabelled
    test splits), ``source`` (= `name`), ``id`` (stable unique id: file stem, plus ``_y<top>_x<left>`` for
    patches).

    Args:
        name: ``"vaihingen"``, ``"potsdam"``, ``"loveda"``, ``"openearthmap"`` or ``"isaid"``.
        root: dataset root.
        split: one of the reader's `splits` (ISPRS: train/test; LoveDA, OpenEarthMap: train/val/test;
            iSAID: train/val), or several joined by ``+`` (``"train+val"``: LoveDA as S5 trains it), or
            ``"heldout"`` / ``"train_minus_heldout"``: the training tiles held out for model selection / the rest.
        streaming: return an `IterableDataset` that reads one image at a time instead of a map-style
            `Dataset` cached as Arrow.
        **options: `cache_dir`, `num_proc` (map-style only), and the reader's options: `patch_size`,
            `stride`, `on_error`, `skip_log` for all; `eroded`, `unknown_colour` (ISPRS); `domain` (LoveDA);
            `unknown_colour` (iSAID); `heldout_fraction` (default 0.125), `heldout_seed` (default 0) for the
            held-out splits.
    """
    reader_cls = get_reader(name)
    load_options = {key: options.pop(key) for key in _LOAD_OPTIONS if key in options}
    heldout = {key: options.pop(key, default) for key, default in _HELDOUT_OPTIONS.items()}
    valid = _reader_options(reader_cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{reader_cls.name}: unknown option(s) {unknown}; valid: "
                        f"{valid + list(_LOAD_OPTIONS) + list(_HELDOUT_OPTIONS)}")
    if streaming and "num_proc" in load_options:
        raise TypeError("num_proc applies to the map-style dataset only, not with streaming=True")
    reader = _READERS_WITH_HELDOUT[reader_cls.name](root, **options)
    reader.heldout_fraction, reader.heldout_seed = float(heldout["heldout_fraction"]), int(heldout["heldout_seed"])
    return reader.load(split, streaming=streaming, **load_options)


__all__ = ["BENCHMARKS", "HELDOUT", "TRAIN_MINUS_HELDOUT", "get_reader", "heldout_ids", "load_benchmark",
           "stage_splits"]
