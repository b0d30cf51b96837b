"""Large-scene inference: throughput (megapixels/s) and peak memory for growing scenes.

    python benchmarks/bench_inference.py                 (1024, 2048, 4096 px squares + tall 1024-wide scenes)
    python benchmarks/bench_inference.py --sizes 512 1024 --tall      (squares only)

Each scene runs in a fresh subprocess, so the peak resident memory (`ru_maxrss`) belongs to that scene alone.
The scene is read by window from a synthetic reader (like a GeoTIFF read with rasterio: no whole image in memory)
and the labels are streamed to a PNG file, so what is measured is the sliding-window engine itself. Reported:
the peak RSS, its increase over the same process's peak after a warm-up ("warm": the model, one batch of windows,
a one-window scene through the same code), and the ratios against the first scene. Memory should not follow the
pixel count: the accumulators hold classes x window x width floats, so square scenes grow only with their width
and tall scenes of one width not at all.
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

from s5_hf.label_sets import get_label_set

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square scene sides (px)")
    parser.add_argument("--tall", type=int, nargs="*", default=[1024, 4096],
                        help="heights of extra 1024 px wide scenes (memory must not depend on height); "
                             "--tall alone: none")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
                   "--overlap", str(args.overlap), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
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
        band = classes * args.window * r["width"] * 4 / 2**20  # accumulator band actually allocated
        full = classes * pixels * 4 / 2**20  # what whole-scene accumulators would need
        print(f"{r['height']:>5}x{r['width']:<5} {pixels / 1e6:6.1f} {r['seconds']:7.1f} {r['mpix_per_s']:6.2f} "
              f"{r['warm_mb']:8.0f} {r['peak_mb']:8.0f} {r['peak_mb'] - r['warm_mb']:9.0f} "
              f"{r['peak_mb'] / base['peak_mb']:10.2f} {pixels / (base['height'] * base['width']):12.1f} "
              f"{band:8.1f} {full:13.1f}")
    print(f"\n(peak-warm of the first scene: {base_growth:.0f} MB; band MB = classes x window x width x 4 bytes)")


if __name__ == "__main__":
    main()
