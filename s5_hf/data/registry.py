"""`load_benchmark`: one entry point for every benchmark reader, by dataset name."""

from __future__ import annotations

import inspect
import os

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
            iSAID: train/val), or several joined by ``+`` (``"train+val"``: LoveDA as S5 trains it).
        streaming: return an `IterableDataset` that reads one image at a time instead of a map-style
            `Dataset` cached as Arrow.
        **options: `cache_dir`, `num_proc` (map-style only), and the reader's options: `patch_size`,
            `stride`, `on_error`, `skip_log` for all; `eroded`, `unknown_colour` (ISPRS); `domain` (LoveDA);
            `unknown_colour` (iSAID).
    """
    reader_cls = get_reader(name)
    load_options = {key: options.pop(key) for key in _LOAD_OPTIONS if key in options}
    valid = _reader_options(reader_cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{reader_cls.name}: unknown option(s) {unknown}; valid: {valid + list(_LOAD_OPTIONS)}")
    if streaming and "num_proc" in load_options:
        raise TypeError("num_proc applies to the map-style dataset only, not with streaming=True")
    reader = reader_cls(root, **options)
    return reader.load(split, streaming=streaming, **load_options)


__all__ = ["BENCHMARKS", "get_reader", "load_benchmark"]
