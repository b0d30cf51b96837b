"""Benchmark data: readers of the owners' layouts, synthetic look-alikes and Parquet shards.

- `load_benchmark(name, root, split, streaming=False, **options)`: Vaihingen, Potsdam, LoveDA,
  OpenEarthMap and iSAID as `datasets` datasets with columns ``image``, ``mask``, ``source``, ``id``.
- `s5_hf.data.synthetic`: ``make_fake_<name>(root, ...)`` writes a tiny learnable copy of each layout.
- `to_parquet_shards(dataset, out_dir, ...)`: a Hub-ready folder of Parquet shards with a dataset card.
"""

from .base import BenchmarkReader, Tile, segmentation_features
from .images import DataFileError
from .isaid import ISAIDReader
from .isprs import PotsdamReader, VaihingenReader
from .loveda import LoveDAReader
from .openearthmap import OpenEarthMapReader
from .registry import BENCHMARKS, get_reader, load_benchmark
from .shards import DatasetCardInfo, to_parquet_shards

__all__ = [
    "BENCHMARKS",
    "BenchmarkReader",
    "DataFileError",
    "DatasetCardInfo",
    "ISAIDReader",
    "LoveDAReader",
    "OpenEarthMapReader",
    "PotsdamReader",
    "Tile",
    "VaihingenReader",
    "get_reader",
    "load_benchmark",
    "segmentation_features",
    "to_parquet_shards",
]
