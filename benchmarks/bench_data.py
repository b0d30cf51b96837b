"""Data pipeline throughput: decode + augment from Parquet shards vs from image files, 0 / 1 / 2 loader workers.

The training's own path end to end: `DataSource(...).load("train")` (the benchmark reader over the files, or
`datasets` over the Parquet shards that `to_parquet_shards` wrote from the same reader), `TrainStream` (per-sample
seeded augmentation in DataLoader workers, batches collated), with
* labeled: `LabeledTransform(512)`: rescale 0.5-2.0, crop 512, flips, normalise (S4P labeled and MDF batches);
* unlabeled: `UnlabeledTransform(512)`: the weak view plus two strong views (colour jitter, grayscale, blur),
  CutMix boxes (S4P's unlabeled batches; two are drawn per step, u and its CutMix partner u_mix).
Data: a fake LoveDA (`s5_hf.data.synthetic.make_fake_loveda`) at LoveDA's own 1024 px, its few training tiles
hard-linked under more numbers so that one epoch holds `--images` tiles (each is still decoded every time).
Shards: `--shards` of them (every worker reads whole shards).

Each case reports its start-up (to the first batch), its wall rate over the second half of its batches (after the
workers' prefetch), and images per CPU-second of the main process plus its workers over the whole case: the
per-core rate, which other load on a shared machine does not inflate (the wall rates it does). The last lines turn the rates into
the S4P step time that this many cores can feed per GPU at the official batch (12 labeled + 2 x 12 unlabeled).

    python benchmarks/bench_data.py                      # 1024 px tiles, 48 images per case (a few minutes)
    python benchmarks/bench_data.py --quick              # 512 px tiles, 16 images per case

`--band_stats` measures instead the per-band statistics pass (`s5_hf.data.band_stats.compute_band_stats`) that
data other than 8-bit RGB gets before training: over `--tiles` 13-band uint16 tiles made in memory (the pass
itself, without file reads), mean/std only and with 2/98 percentiles (`BandHistogram`), in seconds, tiles/s and
peak memory that the pass allocates (tracemalloc, which NumPy reports its arrays to), at 1/10 and all the tiles:
memory must not grow with the tile count.

    python benchmarks/bench_data.py --band_stats --tiles 10000 --tile_size 64

`--bands_vs_rgb` measures read + normalize + augment of a folder dataset (`LabeledFolder` through `DataSource`
and `TrainStream`, as MDF reads the user's own data) of 13-band uint16 GeoTIFF tiles (per-band statistics,
`RawUnitsTransform`) against the same number of 8-bit RGB PNG tiles (`LabeledTransform` with the ImageNet
statistics), same tile size, crop and workers, in images per CPU-second and MB of pixels per CPU-second.

    python benchmarks/bench_data.py --bands_vs_rgb --images 48 --size 512
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
from pathlib import Path

import datasets
import torch
from memory import peak_rss_mb

from s5_hf.cli import ArgumentParser
from s5_hf.data import to_parquet_shards
from s5_hf.data.registry import load_benchmark
from s5_hf.data.streams import DataSource, TrainStream
from s5_hf.data.synthetic import make_fake_loveda
from s5_hf.training.augment import LabeledTransform, UnlabeledTransform

OFFICIAL_BATCH = 12  # per GPU, labeled and unlabeled each (the paper's S4P recipe)


def make_data(root: Path, size: int, images: int, shards: int) -> tuple[Path, Path]:
    """A fake LoveDA with `images` training tiles (hard links of the generated ones) and its Parquet shards."""
    files = make_fake_loveda(root / "loveda", num_images=2, size=size)
    for domain in ("Rural", "Urban"):
        folder = files / "Train" / domain
        originals = sorted(folder.glob("images_png/*.png"), key=lambda p: int(p.stem))
        for k in range(images // 2 - len(originals)):
            source = originals[k % len(originals)]
            number = 10_000 + k + (0 if domain == "Rural" else 5_000)
            for kind in ("images_png", "masks_png"):
                os.link(folder / kind / source.name, folder / kind / f"{number}.png")
    shard_dir = root / "shards"
    to_parquet_shards(load_benchmark("loveda", files, "train", streaming=True), shard_dir, min_shards=shards)
    return files, shard_dir


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children, i.e. the loader workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(location: Path, transform, workers: int, batch: int, images: int, task: str = "loveda") -> dict:
    """Wall rate over the second half of the batches (after start-up and the workers' prefetch), and the CPU time
    per image of the whole case (main process + workers, start-up included), which load on a shared machine
    does not inflate."""
    dataset = DataSource(task, str(location)).load("train")
    stream = TrainStream(dataset, transform, batch_size=batch, shuffle_buffer=0, num_workers=workers, name="bench")
    batches = images // batch
    cpu_start, start = cpu_seconds(), time.perf_counter()
    next(stream)
    first = time.perf_counter()
    for index in range(1, batches):
        if index == batches // 2:
            half = time.perf_counter()
        next(stream)
    end = time.perf_counter()
    del stream  # shuts the workers down and joins them, so that their CPU time is counted
    gc.collect()
    cpu = cpu_seconds() - cpu_start
    return {"startup": first - start, "rate": (batches - batches // 2) * batch / (end - half),
            "total": end - start, "per_core": batches * batch / cpu}


def bench_bands_vs_rgb(size: int, images: int, batch: int, workers: list[int]) -> None:
    """13-band uint16 GeoTIFF tiles vs 8-bit RGB PNG tiles through the folder-dataset training path."""
    from s5_hf.data.band_stats import RawUnitsTransform, compute_band_stats, processor_from_band_stats
    from s5_hf.data.folders import LabeledFolder
    from s5_hf.data.synthetic import make_fake_labeled_folder

    crop = min(512, size)
    print(f"read + normalize + augment of a folder dataset: {images} tiles of {size} px, crop {crop}, batch {batch}; "
          f"os.cpu_count()={os.cpu_count()}, torch threads per process 1")
    with tempfile.TemporaryDirectory() as folder:
        cases = {}
        for name, bands, dtype in (("RGB uint8 PNG", 3, "uint8"), ("13-band uint16 GeoTIFF", 13, "uint16")):
            root = make_fake_labeled_folder(Path(folder) / name.split()[0], num_images=images, size=size,
                                            bands=bands, dtype=dtype)
            if bands == 3:
                transform = LabeledTransform(crop)
            else:
                stats = compute_band_stats(LabeledFolder(root, "mine").iter_images("train"))
                processor = processor_from_band_stats(stats)
                transform = RawUnitsTransform(LabeledTransform(crop, mean=stats.mean, std=stats.std),
                                              processor=processor)
            cases[name] = (root, transform, size * size * bands * (1 if dtype == "uint8" else 2) / 2**20)
        results = {}
        print(f"  {'data':24} {'workers':>7} {'start-up s':>10} {'images/s':>9} {'images per CPU-s':>16} "
              f"{'pixel MB per CPU-s':>18}")
        for name, (root, transform, megabytes) in cases.items():
            for w in workers:
                r = results[name, w] = measure(root, transform, w, batch, images, task="mine")
                print(f"  {name:24} {w:7d} {r['startup']:10.2f} {r['rate']:9.2f} {r['per_core']:16.2f} "
                      f"{r['per_core'] * megabytes:18.1f}")
        for w in workers:
            multi, rgb = results["13-band uint16 GeoTIFF", w], results["RGB uint8 PNG", w]
            print(f"  {w} worker(s): 13-band GeoTIFF vs RGB PNG (baseline): images per CPU-second "
                  f"x{multi['per_core'] / rgb['per_core']:.2f}, wall images/s x{multi['rate'] / rgb['rate']:.2f}")
    print(f"  peak RSS of the main process: {peak_rss_mb():.0f} MB")


def band_stats_pass(tiles: int, size: int, bands: int, percentiles) -> dict:
    """Seconds and traced peak memory (MB) of one statistics pass over `tiles` generated uint16 tiles."""
    import tracemalloc

    import numpy as np

    from s5_hf.data.band_stats import compute_band_stats

    rng = np.random.default_rng(0)
    base = rng.normal(1500, 400, (size, size, bands)).clip(0, 65535).astype(np.uint16)
    offsets = rng.integers(0, 500, (tiles, bands)).astype(np.uint16)

    def items():
        for k in range(tiles):  # a different tile each time at the cost of one addition
            yield base + offsets[k]

    generation = time.perf_counter()
    for _ in items():
        pass
    generation = time.perf_counter() - generation
    tracemalloc.start()
    start = time.perf_counter()
    stats = compute_band_stats(items(), percentiles=percentiles)
    seconds = time.perf_counter() - start - generation
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert stats.images == tiles
    return {"seconds": seconds, "rate": tiles / seconds, "peak_mb": peak}


def bench_band_stats(tiles: int, size: int, bands: int) -> None:
    print(f"band statistics pass over {bands}-band uint16 tiles of {size} px made in memory (their making, "
          f"timed separately, subtracted); os.cpu_count()={os.cpu_count()}")
    print(f"  {'statistics':28} {'tiles':>7} {'seconds':>8} {'tiles/s':>9} {'peak MB':>8}")
    for label, percentiles in (("mean/std", None), ("mean/std + 2/98 percentiles", (2, 98))):
        for count in (max(1, tiles // 10), tiles):
            r = band_stats_pass(count, size, bands, percentiles)
            print(f"  {label:28} {count:7d} {r['seconds']:8.2f} {r['rate']:9.0f} {r['peak_mb']:8.1f}")
    print(f"  peak RSS of the process: {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512 px tiles, 16 images per case")
    parser.add_argument("--size", type=int, help="tile size in px (default 1024, LoveDA's)")
    parser.add_argument("--images", type=int, help="images per case (default 48)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--band_stats", action="store_true", help="time the per-band statistics pass instead")
    parser.add_argument("--tiles", type=int, default=10_000, help="--band_stats: tiles in the pass")
    parser.add_argument("--tile_size", type=int, default=64, help="--band_stats: tile side in px")
    parser.add_argument("--bands", type=int, default=13, help="--band_stats: bands per tile (Sentinel-2: 13)")
    parser.add_argument("--bands_vs_rgb", action="store_true",
                        help="13-band uint16 GeoTIFF vs RGB PNG folder datasets instead")
    args = parser.parse_args()
    if args.bands_vs_rgb:
        datasets.disable_progress_bars()
        torch.set_num_threads(1)
        bench_bands_vs_rgb(args.size or 512, args.images or 48, args.batch, [int(w) for w in args.workers.split(",")])
        return
    if args.band_stats:
        bench_band_stats(args.tiles, args.tile_size, args.bands)
        return
    size = args.size or (512 if args.quick else 1024)
    images = args.images or (16 if args.quick else 48)
    workers = [int(w) for w in args.workers.split(",")]
    datasets.disable_progress_bars()
    torch.set_num_threads(1)  # augmentation runs one sample per process; the comparison is per core
    print(f"decode + augment, fake LoveDA tiles of {size} px (PNG), crops of 512, batch {args.batch}, {images} images "
          f"per case; os.cpu_count()={os.cpu_count()}, torch threads per process 1")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        files, shards = make_data(Path(folder), size, images, args.shards)
        print(f"  data made in {time.perf_counter() - start:.0f} s: {images} training tiles as files, "
              f"{args.shards} Parquet shards ({sum(p.stat().st_size for p in shards.rglob('*.parquet')) / 2**20:.0f} MB)")
        transforms = {"labeled": LabeledTransform(512), "unlabeled": UnlabeledTransform(512)}
        results = {}
        print(f"  {'transform':10} {'source':14} {'workers':>7} {'start-up s':>10} {'total s':>8} {'images/s':>9} "
              f"{'images per CPU-s':>16}")
        for name, transform in transforms.items():
            for source, location in (("image files", files), ("Parquet shards", shards)):
                for w in workers:
                    r = results[name, source, w] = measure(location, transform, w, args.batch, images)
                    print(f"  {name:10} {source:14} {w:7d} {r['startup']:10.2f} {r['total']:8.2f} {r['rate']:9.2f} "
                          f"{r['per_core']:16.2f}")
            for w in workers:
                shard, file = results[name, "Parquet shards", w], results[name, "image files", w]
                print(f"  {name}, {w} worker(s): Parquet shards vs image files (baseline): images per CPU-second "
                      f"x{shard['per_core'] / file['per_core']:.2f}, wall images/s x{shard['rate'] / file['rate']:.2f}")
        most = max(workers)
        for source in ("image files", "Parquet shards"):
            lab = results["labeled", source, most]["per_core"]
            unl = results["unlabeled", source, most]["per_core"]
            core_seconds = OFFICIAL_BATCH / lab + 2 * OFFICIAL_BATCH / unl
            print(f"  S4P step at the official batch ({OFFICIAL_BATCH} labeled + 2 x {OFFICIAL_BATCH} unlabeled per "
                  f"GPU) from {source}: {core_seconds:.1f} core-seconds of data work; a GPU step shorter than "
                  f"{core_seconds / max(os.cpu_count() or 1, 1):.1f} s would wait on these {os.cpu_count()} cores")
    print(f"  peak RSS of the main process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
