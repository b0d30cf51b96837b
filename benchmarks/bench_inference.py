"""Large-scene inference: throughput (megapixels/s) and peak memory for growing scenes.

    python benchmarks/bench_inference.py                 (1024, 2048, 4096 px squares + tall 1024-wide scenes)
    python benchmarks/bench_inference.py --sizes 512 1024 --tall      (squares only)

Each scene runs in a fresh subprocess, so the peak resident memory (`ru_maxrss`) belongs to that scene alone.
The scene is read by window from a synthetic reader (like a GeoTIFF read with rasterio: no whole image in memory)
and the labels are streamed to a PNG file, so what is measured is the sliding-window engine itself. Reported:
the peak RSS, its increase over the same process's peak after a warm-up ("warm": the model, one batch of windows,
a one-window scene through the same code), and the ratios against the first scene. Memory should not follow the
pixel count: the accumulators hold classes x band x width floats (band: the rows one batch of windows spans), so
square scenes grow only with their width and tall scenes of one width not at all.

    python benchmarks/bench_inference.py --compare_batches 1 4 8 [--preset vit-b] [--compare_size 1024]

compares window batch sizes instead, in ONE process on the same scene, in interleaved rounds: images/s and
windows/s (wall and process CPU time, min and median), each batch size's speed against batch 1, the FLOPs of the
scene and the fraction of this machine's measured fp32 matmul rate (benchmarks/machine.py). This is the path
`s5_hf.evaluation` takes for sliding-window datasets (one evaluation image = one scene, flip averaging aside).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from s5_hf.cli import ArgumentParser
from s5_hf.label_sets import MDF_TASKS, get_label_set

SMALL = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, image_size=512, out_indices=[2, 3, 4, 6],
             decoder_hidden_size=64, part_features=0, tasks=["loveda"])


def run_one(height: int, width: int, window: int, overlap: float, batch_size: int, threads: int) -> dict:
    """Inside the subprocess: predict one synthetic scene and report time and memory."""
    import torch

    from s5_hf import S5Config, S5ForSemanticSegmentation
    from s5_hf.inference import Scene, segment_file

    torch.set_num_threads(threads)

    class SyntheticScene(Scene):
        """Smooth pseudo-imagery generated per window from the pixel coordinates (no image held in memory)."""

        def __init__(self, rows: int, cols: int):
            self.name, self.height, self.width = "synthetic", rows, cols
            self.bands, self.dtype = 3, np.dtype(np.uint8)

        def read(self, top, left, rows, cols):
            y = np.arange(top, top + rows, dtype=np.float32)[:, None]
            x = np.arange(left, left + cols, dtype=np.float32)[None, :]
            bands = [127 + 120 * np.sin(y / p + x / q) for p, q in ((37.0, 53.0), (71.0, 29.0), (113.0, 91.0))]
            return np.stack(bands).astype(np.uint8)

    torch.manual_seed(0)
    model = S5ForSemanticSegmentation(S5Config(**SMALL)).eval()
    options = dict(window=window, overlap=overlap, batch_size=batch_size, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: a forward pass of one full batch, and a one-window scene through the same code path; the
        # peak so far (model, activations, buffers) is the baseline the scene's peak is compared with.
        with torch.inference_mode():
            model(torch.zeros(batch_size, 3, window, window))
        segment_file(model, SyntheticScene(window, window), Path(tmp) / "warm.png", **options)
        warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        segment_file(model, SyntheticScene(height, width), Path(tmp) / "mask.png", **options)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"height": height, "width": width, "seconds": seconds, "mpix_per_s": height * width / 1e6 / seconds,
            "warm_mb": warm / 1024, "peak_mb": peak / 1024}


def band_rows(height: int, width: int, args) -> int:
    """Rows of the predictor's accumulator band: those one batch of windows spans (as in `iter_label_strips`)."""
    from s5_hf.data.patches import window_starts

    win_h, win_w = min(args.window, height), min(args.window, width)
    rows = window_starts(height, win_h, max(1, round(win_h * (1 - args.overlap))))
    cols = window_starts(width, win_w, max(1, round(win_w * (1 - args.overlap))))
    windows = [top for top in rows for _ in cols]
    return min(height, max(windows[min(i + args.batch_size, len(windows)) - 1] + win_h - windows[i]
                           for i in range(0, len(windows), args.batch_size)))


def compare_batches(batch_sizes: list[int], preset: str, size: int, window: int, overlap: float, rounds: int,
                    threads: int, compile_too: bool = False) -> None:
    """Interleaved rounds of the sliding-window predictor over one size x size image, per window batch size;
    with `compile_too`, also the `torch.compile`d model (inductor) at the largest batch size."""
    import statistics

    import torch
    from machine import (  # benchmarks/machine.py
        case_line,
        count_flops,
        machine_line,
        measure_matmul_rates,
    )
    from memory import peak_rss_mb  # benchmarks/memory.py

    from s5_hf import S5Config, S5ForSemanticSegmentation
    from s5_hf.data.patches import window_starts
    from s5_hf.inference import (
        ArrayScene,
        CompiledSegmenter,
        SlidingWindow,
        iter_label_strips,
    )

    torch.set_num_threads(threads)
    print(machine_line())
    rates = measure_matmul_rates()
    print(rates.describe())
    torch.manual_seed(0)
    if preset == "small":
        config = S5Config(**SMALL)
    else:
        config = S5Config.from_preset(preset, image_size=window, tasks=list(MDF_TASKS))
    model = S5ForSemanticSegmentation(config).eval()
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)

    compiled = CompiledSegmenter(model) if compile_too else None
    cases = [(b, model) for b in batch_sizes] + ([(f"{max(batch_sizes)} compiled", compiled)] if compile_too else [])
    sizes = {name: (name if isinstance(name, int) else max(batch_sizes)) for name, _ in cases}

    def predict(name) -> np.ndarray:
        sliding = SlidingWindow(window, overlap, sizes[name])
        runner = dict(cases)[name]
        return np.concatenate([s for _, s in iter_label_strips(runner, ArrayScene(image), sliding=sliding)])

    batch_sizes = [name for name, _ in cases]
    flops = {b: count_flops(lambda b=b: predict(b)) for b in batch_sizes if b in sizes and isinstance(b, int)}
    if compile_too:
        start = time.perf_counter()
        predict(batch_sizes[-1])  # compiles (once per batch shape: full batches and the last, smaller one)
        print(f"torch.compile (inductor) of the first scene, compilation included: {time.perf_counter() - start:.1f} s")
        flops[batch_sizes[-1]] = flops[max(sizes.values())]
    reference = predict(batch_sizes[0])
    wall = {b: [] for b in batch_sizes}
    cpu = {b: [] for b in batch_sizes}
    for _ in range(rounds):
        for b in batch_sizes:
            start, start_cpu = time.perf_counter(), time.process_time()
            labels = predict(b)
            wall[b].append(time.perf_counter() - start)
            cpu[b].append(time.process_time() - start_cpu)
            changed = float((labels != reference).mean())
            if changed > 1e-4:  # batching must not change the prediction (float rounding may flip exact ties)
                sys.exit(f"batch {b}: {changed:.2%} of the labels differ from batch {batch_sizes[0]}")
    stride = max(1, round(window * (1 - overlap)))
    windows = len(window_starts(size, min(window, size), stride)) ** 2
    print(f"[window batches] {preset}, one {size}x{size} image, window {window}, overlap {overlap}: {windows} windows; "
          f"{rounds} interleaved rounds, {torch.get_num_threads()} thread(s) (min / median)")
    base = batch_sizes[0]
    for b in batch_sizes:
        w, c = min(wall[b]), min(cpu[b])
        print(f"  batch {b!s:>3}: {1 / w:6.3f} images/s, {windows / w:6.2f} windows/s (wall min; median "
              f"{windows / statistics.median(wall[b]):6.2f}), CPU {c:7.2f} / {statistics.median(cpu[b]):7.2f} s; "
              f"speed vs batch {base}: wall x{min(wall[base]) / w:.2f} (min) "
              f"x{statistics.median(wall[base]) / statistics.median(wall[b]):.2f} (median), "
              f"CPU x{min(cpu[base]) / c:.2f}")
        print("    " + case_line(f"batch {b}", w, flops[b], rates, torch.float32, peak_rss_mb()))


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square scene sides (px)")
    parser.add_argument("--tall", type=int, nargs="*", default=[1024, 4096],
                        help="heights of extra 1024 px wide scenes (memory must not depend on height); "
                             "--tall alone: none")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compare_batches", type=int, nargs="+",
                        help="compare these window batch sizes on one image in one process (first = baseline)")
    parser.add_argument("--preset", default="small", help="small (the config above), vit-b, ... (--compare_batches)")
    parser.add_argument("--compare_size", type=int, default=1024, help="image side for --compare_batches")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds for --compare_batches")
    parser.add_argument("--compare_compile", action="store_true",
                        help="with --compare_batches: also torch.compile (inductor) at the largest batch size")
    args = parser.parse_args()
    if args.compare_batches:
        compare_batches(args.compare_batches, args.preset, args.compare_size, args.window, args.overlap, args.rounds,
                        args.threads, args.compare_compile)
        return
    if args.child:
        height, width = map(int, args.child.split("x"))
        print(json.dumps(run_one(height, width, args.window, args.overlap, args.batch_size, args.threads)))
        return

    shapes = [(s, s) for s in args.sizes]
    shapes += [(h, 1024) for h in args.tall if h > 0 and (h, 1024) not in shapes]
    print(f"config: {SMALL}\nwindow {args.window}, overlap {args.overlap}, batch {args.batch_size}, "
          f"{args.threads} thread(s); one fresh process per scene\n")
    rows = []
    for height, width in shapes:
        command = [sys.executable, __file__, "--child", f"{height}x{width}", "--window", str(args.window),
                   "--overlap", str(args.overlap), "--batch_size", str(args.batch_size), "--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"{height}x{width} failed:\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {r['height']}x{r['width']}: {r['seconds']:.1f} s", flush=True)

    classes = get_label_set("loveda").num_classes
    base = rows[0]
    base_growth = max(base["peak_mb"] - base["warm_mb"], 1e-9)
    print(f"\n{'scene':>11} {'Mpx':>6} {'s':>7} {'Mpx/s':>6} {'warm MB':>8} {'peak MB':>8} {'peak-warm':>9} "
          f"{'peak ratio':>10} {'pixels ratio':>12} {'band MB':>8} {'full-scene MB':>13}")
    for r in rows:
        pixels = r["height"] * r["width"]
        band = classes * band_rows(r["height"], r["width"], args) * r["width"] * 4 / 2**20  # accumulator allocated
        full = classes * pixels * 4 / 2**20  # what whole-scene accumulators would need
        print(f"{r['height']:>5}x{r['width']:<5} {pixels / 1e6:6.1f} {r['seconds']:7.1f} {r['mpix_per_s']:6.2f} "
              f"{r['warm_mb']:8.0f} {r['peak_mb']:8.0f} {r['peak_mb'] - r['warm_mb']:9.0f} "
              f"{r['peak_mb'] / base['peak_mb']:10.2f} {pixels / (base['height'] * base['width']):12.1f} "
              f"{band:8.1f} {full:13.1f}")
    print(f"\n(peak-warm of the first scene: {base_growth:.0f} MB; band MB = classes x band rows x width x 4 bytes, "
          f"the band being the rows one batch of windows spans)")


if __name__ == "__main__":
    main()
