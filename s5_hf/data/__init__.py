"""Benchmark data: readers of the owners' layouts, synthetic look-alikes and Parquet shards.

- `load_benchmark(name, root, split, streaming=False, **options)`: Vaihingen, Potsdam, LoveDA,
  OpenEarthMap and iSAID as `datasets` datasets with columns ``image``, ``mask``, ``source``, ``id``.
- `s5_hf.data.synthetic`: ``make_fake_<name>(root, ...)`` writes a tiny learnable copy of each layout.
- `to_parquet_shards(dataset, out_dir, ...)`: a Hub-ready folder of Parquet shards with a dataset card.
- `LabeledFolder`: a user's own folder (or CSV) of image/mask pairs, any bands and dtype, with nodata.
- `compute_band_stats` / `processor_from_band_stats`: per-band statistics for data that is not 8-bit RGB.
"""

from .band_stats import BandStats, compute_band_stats, processor_from_band_stats
from .base import BenchmarkReader, Tile, segmentation_features
from .folders import LabeledFolder
from .images import DataFileError
from .isaid import ISAIDReader
from .isprs import PotsdamReader, VaihingenReader
from .loveda import LoveDAReader
from .openearthmap import OpenEarthMapReader
from .registry import BENCHMARKS, get_reader, load_benchmark
from .shards import DatasetCardInfo, to_parquet_shards

__all__ = [
    "BENCHMARKS",
    "BandStats",
    "LabeledFolder",
    "compute_band_stats",
    "processor_from_band_stats",
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
