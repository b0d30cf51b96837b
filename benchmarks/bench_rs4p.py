"""RS4P selection benchmarks on CPU, each figure printed with its baseline measured in the same run.

1. Scoring throughput (images/s) of `ChunkScorer` (decode, normalise, forward, entropy, PNG pseudo-label)
   with the tiny test model at 64 and 512 px, against the bare model forward on the same batches (the
   difference is the pipeline's own cost per image, which a real run adds to the big model's forward).
   Optionally (--vit) one forward of the paper's ViT-B (and ViT-H) UperNet at 512 px, to extrapolate a real
   scoring run.
2. The diversity step on synthetic 768-d features: spherical K-Means of a labeled set (38,936 vectors, the
   official S4P split size) into M clusters, nearest-prototype assignment of N pool vectors, entropy ranking
   (ties by string id) and the quota walk, for N = 100k and 1M. Each size runs in a fresh subprocess so its
   peak resident memory (VmHWM) is its own; the baseline is the same process after building the inputs.
3. Reading score shards as the merge does (100k rows by default: ids and scores kept, each shard's features
   assigned to their nearest prototype and dropped), against writing them.

    python benchmarks/bench_rs4p.py                 # scoring + diversity at 100k and 1M (~1-2 min)
    python benchmarks/bench_rs4p.py --vit vit-b     # also a ViT-B forward at 512 px (add vit-h: minutes)
    python benchmarks/bench_rs4p.py --features 1000000 10000000   # only the diversity step, pool streamed
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.rs4p import (
    ChunkScorer,
    RawImage,
    ScoringOptions,
    assign_to_prototypes,
    select_by_quota,
    spherical_kmeans,
)
from s5_hf.rs4p.scoring import to_pixel_values
from memory import current_rss_mb, peak_rss_mb  # benchmarks/memory.py (scripts run from this folder)

LABELED = 38_936
DIM = 768


# ---- 1. scoring -------------------------------------------------------------------------------------------
def bench_scoring(num_images: int, batch_size: int, image_size: int) -> None:
    torch.manual_seed(0)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=image_size,
                      patch_size=16, out_indices=[1, 2, 3, 4], decoder_hidden_size=16, tasks=["isaid"])
    model = S5ForSemanticSegmentation(config).eval()
    rng = np.random.default_rng(0)
    arrays, blobs = [], []
    for _ in range(num_images):  # smooth content (upsampled noise) compresses like imagery, unlike raw noise
        coarse = Image.fromarray(rng.integers(0, 256, (image_size // 8, image_size // 8, 3), dtype=np.uint8))
        arrays.append(np.asarray(coarse.resize((image_size, image_size), Image.Resampling.BILINEAR)))
        buffer = io.BytesIO()
        Image.fromarray(arrays[-1]).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    images = [RawImage(f"img{i}", "bench", b) for i, b in enumerate(blobs)]
    scorer = ChunkScorer(model, ScoringOptions(image_size=image_size, batch_size=batch_size))
    scorer.score(images[:batch_size])  # warm-up

    start = time.perf_counter()
    scorer.score(images)
    pipeline = time.perf_counter() - start

    batches = [to_pixel_values(arrays[i:i + batch_size]) for i in range(0, num_images, batch_size)]
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch)
    forward = time.perf_counter() - start
    overhead_ms = (pipeline - forward) / num_images * 1000
    print(f"\nScoring, tiny model at {image_size} px (JPEG input), {num_images} images, batch {batch_size}, "
          f"{torch.get_num_threads()} threads")
    print("| step | images/s | ms/image |\n|---|---|---|")
    print(f"| bare model forward (baseline) | {num_images / forward:,.1f} | {forward / num_images * 1000:.1f} |")
    print(f"| ChunkScorer (decode + forward + scores + PNG) | {num_images / pipeline:,.1f} "
          f"({forward / pipeline:.2f}x of baseline) | {pipeline / num_images * 1000:.1f} |")
    print(f"| pipeline overhead per image (not the model) | | {overhead_ms:.1f} |")


def bench_vit(preset: str, batch_size: int) -> float:
    config = S5Config.from_preset(preset, image_size=512, tasks=["isaid"])
    model = S5ForSemanticSegmentation(config).eval()
    pixels = torch.randn(batch_size, 3, 512, 512)
    with torch.inference_mode():
        model(pixels[:1])  # warm-up
        start = time.perf_counter()
        model(pixels)
        seconds = (time.perf_counter() - start) / batch_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"| {preset} UperNet ({params:.1f} M params) forward at 512 px | {seconds:.2f} s/image | "
          f"1M images: {seconds * 1e6 / 86400:.1f} CPU-days on this machine |")
    return seconds


def bench_score_read(num_chunks: int, chunk_size: int = 1000, num_classes: int = 16) -> None:
    """Reading the score shards' columns the merge needs (features into one float16 array), as at the start of
    the main process's merge; the baseline is writing the same shards."""
    import tempfile
    from pathlib import Path

    import pyarrow as pa

    from s5_hf.rs4p.pipeline import _read_scores
    from s5_hf.rs4p.pool import Chunk
    from s5_hf.rs4p.scoring import ScoreStore, score_schema

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        store = ScoreStore(Path(folder))
        chunks, start = [], time.perf_counter()
        for c in range(num_chunks):
            n = chunk_size
            features = rng.standard_normal((n, DIM), dtype=np.float32).astype(np.float16)
            table = pa.table({
                "id": [f"pool/{c}/{i}" for i in range(n)], "source": ["bench"] * n,
                "error": pa.nulls(n, pa.string()), "height": pa.array([512] * n, pa.int32()),
                "width": pa.array([512] * n, pa.int32()), "entropy": rng.random(n), "confidence": rng.random(n),
                "class_counts": pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 99, n * num_classes)),
                                                                  num_classes),
                "feature": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel(), pa.float16()), DIM),
                "pseudo_label": pa.array([b"x" * 4000] * n, pa.binary()), "digest": ["0" * 32] * n,
            }, schema=score_schema(num_classes, DIM))
            store.write(c, table)
            chunks.append(Chunk(c, 0, c * n, (c + 1) * n))
        write = time.perf_counter() - start
        # The merge assigns each shard's features to the labeled prototypes as it reads them (M = 100 here).
        centroids = torch.nn.functional.normalize(torch.randn(100, DIM, generator=torch.Generator().manual_seed(0)))
        start = time.perf_counter()
        _read_scores(store, chunks, DIM, with_scores=True, centroids=centroids)
        read = time.perf_counter() - start
    rows = num_chunks * chunk_size
    print(f"\nScore shards: {num_chunks} x {chunk_size} rows, {DIM}-d float16 features")
    print("| step | s | rows/s | 1M rows (linear) |\n|---|---|---|---|")
    print(f"| write shards (baseline) | {write:.1f} | {rows / write:,.0f} | {write * 1e6 / rows:.0f} s |")
    print(f"| merge read (ids, scores; features -> nearest of 100 prototypes) | {read:.1f} | {rows / read:,.0f} | "
          f"{read * 1e6 / rows:.0f} s |")


# ---- 2. diversity step ------------------------------------------------------------------------------------
def clustered_features(num: int, centres: np.ndarray, rng: np.random.Generator, chunk: int = 10_000) -> np.ndarray:
    """`num` float16 vectors around random centres, built in small chunks so that building the inputs does not
    set the process's peak memory (VmHWM) that the step is measured by."""
    out = np.empty((num, centres.shape[1]), dtype=np.float16)
    for start in range(0, num, chunk):
        n = min(chunk, num - start)
        noise = 2.0 * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
        block = centres[rng.integers(0, len(centres), n)] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + n] = block
    return out


def diversity_case(num_pool: int, num_clusters: int, target: int) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    labeled = clustered_features(LABELED, centres, rng)
    pool = clustered_features(num_pool, centres, rng)
    entropy = rng.random(num_pool)
    ids = [f"millionaid/{i:08d}.jpg" for i in rng.permutation(num_pool)]
    baseline = current_rss_mb()

    timings = {}
    start = time.perf_counter()
    kmeans = spherical_kmeans(labeled, num_clusters, seed=0, max_iter=50)
    timings["kmeans"] = time.perf_counter() - start
    start = time.perf_counter()
    clusters, _ = assign_to_prototypes(pool, kmeans.centroids)
    timings["assign"] = time.perf_counter() - start
    start = time.perf_counter()
    result = select_by_quota(entropy, ids, clusters, kmeans.counts.numpy(), min(target, num_pool // 2))
    timings["rank_and_walk"] = time.perf_counter() - start
    return {"pool": num_pool, "baseline_mb": baseline, "peak_mb": peak_rss_mb(), "selected": len(result.selected),
            "kmeans_iterations": kmeans.num_iterations, **timings}


def bench_diversity(sizes: list[int], num_clusters: int, target: int) -> None:
    print(f"\nDiversity step: K-Means of {LABELED:,} labeled x {DIM} into M={num_clusters} (max 50 iterations), "
          f"assignment, ranking + quota walk (B = min({target:,}, N/2)); {torch.get_num_threads()} threads")
    print("| pool N | k-means s (iters) | assign s | rank + walk s | total s | RSS after inputs MB (baseline) "
          "| peak RSS MB | step's extra MB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--_diversity_case", str(size), "--num_clusters", str(num_clusters),
             "--target", str(target)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["kmeans"] + r["assign"] + r["rank_and_walk"]
        print(f"| {size:,} | {r['kmeans']:.1f} ({r['kmeans_iterations']}) | {r['assign']:.1f} | "
              f"{r['rank_and_walk']:.1f} | {total:.1f} | {r['baseline_mb']:,.0f} | {r['peak_mb']:,.0f} | "
              f"{r['peak_mb'] - r['baseline_mb']:,.0f} |")


def feature_blocks(num: int, bank: np.ndarray, rng: np.random.Generator, block: int, clock: dict):
    """`num` float16 feature rows as `(block, D)` arrays, as the merge reads them shard by shard: never the whole
    `(num, D)` array (10M x 768 is 15 GB in float16). Rows are drawn from a pre-built bank of clustered
    vectors, so making a block is one gather; the wall and CPU time spent making blocks is added to `clock`
    and left out of the step's figures."""
    for start in range(0, num, block):
        wall, cpu = time.perf_counter(), time.process_time()
        rows = bank[rng.integers(0, len(bank), min(block, num - start))]
        clock["wall"] += time.perf_counter() - wall
        clock["cpu"] += time.process_time() - cpu
        yield rows


def streamed_case(num_pool: int, num_clusters: int, target: int, block: int) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    labeled = clustered_features(LABELED, centres, rng)
    bank = clustered_features(131_072, centres, rng)  # 192 MB of float16 rows the pool blocks are drawn from
    entropy = rng.random(num_pool)
    ids = np.array([f"millionaid/{i:08d}.jpg" for i in rng.permutation(num_pool)], dtype=object)
    baseline = current_rss_mb()

    timings, cpu = {}, {}
    wall, start = time.perf_counter(), time.process_time()
    kmeans = spherical_kmeans(labeled, num_clusters, seed=0, max_iter=50)
    timings["kmeans"], cpu["kmeans"] = time.perf_counter() - wall, time.process_time() - start
    making = {"wall": 0.0, "cpu": 0.0}
    wall, start = time.perf_counter(), time.process_time()
    clusters, _ = assign_to_prototypes(feature_blocks(num_pool, bank, rng, block, making), kmeans.centroids)
    timings["assign"] = time.perf_counter() - wall - making["wall"]
    cpu["assign"] = time.process_time() - start - making["cpu"]
    wall, start = time.perf_counter(), time.process_time()
    result = select_by_quota(entropy, ids, clusters, kmeans.counts.numpy(), min(target, num_pool // 2))
    timings["rank_and_walk"], cpu["rank_and_walk"] = time.perf_counter() - wall, time.process_time() - start
    return {"pool": num_pool, "baseline_mb": baseline, "peak_mb": peak_rss_mb(), "selected": len(result.selected),
            "kmeans_iterations": kmeans.num_iterations, "making_blocks_s": making["wall"],
            "assign_gflop": 2 * num_pool * DIM * num_clusters / 1e9,
            **timings, **{f"{k}_cpu": v for k, v in cpu.items()}}


def bench_streamed(sizes: list[int], num_clusters: int, target: int, block: int) -> None:
    from machine import machine_line, measure_matmul_rates  # benchmarks/machine.py

    rates = measure_matmul_rates()
    print(f"\n{machine_line()}\n{rates.describe()}")
    print(f"Diversity step, pool streamed in float16 blocks of {block:,} rows (never the (N, {DIM}) array): "
          f"K-Means of {LABELED:,} labeled into M={num_clusters}, streamed assignment, ranking + quota walk "
          f"(B = min({target:,}, N/2)); {torch.get_num_threads()} threads; wall (CPU) seconds")
    print("| pool N | k-means | assign | assign GFLOP (% of fp32 rate) | rank + walk | total | "
          "RSS after inputs MB | peak RSS MB | step's extra MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--_streamed_case", str(size), "--num_clusters", str(num_clusters),
             "--target", str(target), "--block", str(block)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["kmeans"] + r["assign"] + r["rank_and_walk"]
        total_cpu = r["kmeans_cpu"] + r["assign_cpu"] + r["rank_and_walk_cpu"]
        share = 100 * r["assign_gflop"] / r["assign"] / rates.float32
        print(f"| {size:,} | {r['kmeans']:.1f} ({r['kmeans_cpu']:.1f}), {r['kmeans_iterations']} iters | "
              f"{r['assign']:.1f} ({r['assign_cpu']:.1f}) | {r['assign_gflop']:,.0f} ({share:.0f}%) | "
              f"{r['rank_and_walk']:.1f} ({r['rank_and_walk_cpu']:.1f}) | {total:.1f} ({total_cpu:.1f}) | "
              f"{r['baseline_mb']:,.0f} | {r['peak_mb']:,.0f} | {r['peak_mb'] - r['baseline_mb']:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--num_clusters", type=int, default=100)
    parser.add_argument("--target", type=int, default=1_000_000)
    parser.add_argument("--score_images", type=int, default=512)
    parser.add_argument("--score_shards", type=int, default=100, help="chunks of 1000 rows for the read benchmark")
    parser.add_argument("--vit", nargs="*", default=[], help="presets to time at 512 px: vit-b, vit-l, vit-h")
    parser.add_argument("--features", type=int, nargs="+", default=[],
                        help="only the diversity step, pool streamed in blocks, at these sizes (e.g. 1000000 10000000)")
    parser.add_argument("--block", type=int, default=65_536, help="rows per streamed feature block")
    parser.add_argument("--_diversity_case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_streamed_case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._diversity_case:
        print(json.dumps(diversity_case(args._diversity_case, args.num_clusters, args.target)))
        return
    if args._streamed_case:
        print(json.dumps(streamed_case(args._streamed_case, args.num_clusters, args.target, args.block)))
        return
    if args.features:
        bench_streamed(args.features, args.num_clusters, args.target, args.block)
        return
    bench_scoring(args.score_images, batch_size=16, image_size=64)
    bench_scoring(max(16, args.score_images // 16), batch_size=8, image_size=512)
    if args.vit:
        print("\n| model | time | extrapolation |\n|---|---|---|")
        for preset in args.vit:
            bench_vit(preset, batch_size=2)
    bench_score_read(args.score_shards)
    bench_diversity(args.sizes, args.num_clusters, args.target)


if __name__ == "__main__":
    main()
