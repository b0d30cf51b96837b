"""Oriented-detection benchmarks on CPU: the pure-torch ops against their sizes, and the detector's training step
and inference (images/s, peak memory).

* ops: rotated NMS (N boxes, random, 30 % of them jittered copies so that suppression happens) and rotated
  RoIAlign (K RoIs of 7 x 7 on a 256-channel stride-4 map of a 1024 px image), median of --repeats runs.
* model: `S5ForOrientedDetection` with the DIOR-R + DOTA heads; training step = forward with targets + backward
  + AdamW (2 + 2 images, as the recipe's per-GPU batch), inference = eval forward with NMS. Each case runs in a
  fresh subprocess (memory = its own VmHWM high-water mark, see memory.py). "small" is a 64-wide 4-layer model
  at 256 px; "vit-b" is the paper's ViT-B at 1024 px (minutes per step on 2 cores).

    python benchmarks/bench_detection.py --only ops
    python benchmarks/bench_detection.py --only model --sizes small
    python benchmarks/bench_detection.py --only model --sizes vit-b --batch 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import torch

from memory import current_rss_mb, peak_rss_mb  # benchmarks/memory.py (scripts run from this folder)
from s5_hf.configuration_s5_detection import S5DetectionConfig
from s5_hf.modeling_s5_detection import S5ForOrientedDetection
from s5_hf.obb_nms import obb_nms
from s5_hf.obb_roi_align import rotated_roi_align

SIZES = {
    "small": dict(kwargs=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, out_indices=[1, 2, 3, 4],
                              part_features=16, image_size=256), image_size=256),
    "vit-b": dict(kwargs=dict(), image_size=1024),
}


def random_boxes(n: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    r = lambda: torch.rand(n, generator=generator)  # noqa: E731
    return torch.stack([r() * extent, r() * extent, r() * 60 + 8, r() * 30 + 4, (r() - 0.5) * math.pi], 1)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ops(repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (100, 500, 1000, 2000):
        boxes = random_boxes(n, 1024, g)
        copies = int(0.3 * n)
        boxes[-copies:] = boxes[:copies] + torch.randn(copies, 5, generator=g) * 0.5
        scores = torch.rand(n, generator=g)
        seconds = timed(lambda: obb_nms(boxes, scores, 0.1), repeats)
        rows.append({"op": "rotated NMS", "size": n, "ms": round(1000 * seconds, 2)})
    features = torch.randn(1, 256, 256, 256, generator=g)
    for k in (128, 512, 2000):
        rois = torch.cat([torch.zeros(k, 1), random_boxes(k, 1024, g)], 1)
        seconds = timed(lambda: rotated_roi_align(features, rois, 7, 0.25, 2), repeats)
        rows.append({"op": "rotated RoIAlign 7x7", "size": k, "ms": round(1000 * seconds, 2)})
    return rows


def run_case(size: str, kind: str, batch: int, steps: int) -> dict:
    spec = SIZES[size]
    config = (S5DetectionConfig.from_preset("vit-b", image_size=spec["image_size"]) if size == "vit-b"
              else S5DetectionConfig(**spec["kwargs"]))
    model = S5ForOrientedDetection(config)
    side = spec["image_size"]
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2 * batch, 3, side, side, generator=g)
    tasks = ["dior"] * batch + ["dota"] * batch
    targets = []
    for task in tasks:
        n = 8
        boxes = torch.stack([torch.rand(n, generator=g) * side, torch.rand(n, generator=g) * side,
                             torch.rand(n, generator=g) * side / 8 + 8, torch.rand(n, generator=g) * side / 16 + 4,
                             (torch.rand(n, generator=g) - 0.5) * math.pi], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, 18, (n,), generator=g)})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    before = current_rss_mb()

    def train_step():
        model.train()
        loss = model(pixels, task=tasks, targets=targets).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        optimizer.step()

    def infer():
        model.eval()
        with torch.no_grad():
            model(pixels, task=tasks)

    seconds = timed(train_step if kind == "train" else infer, steps)
    return {"size": size, "kind": kind, "images": 2 * batch, "s_per_step": round(seconds, 3),
            "images_per_s": round(2 * batch / seconds, 3), "peak_mb": round(peak_rss_mb()), "rss_before_mb": round(before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["ops", "model", "all"], default="all")
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=2, help="images per dataset (2 + 2 as the recipe)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        size, kind = args.case.split(":")
        print(json.dumps(run_case(size, kind, args.batch, args.steps)))
        return
    if args.only in ("ops", "all"):
        for row in bench_ops(args.repeats):
            print(f"{row['op']:24} {row['size']:6d} {row['ms']:10.2f} ms")
    if args.only in ("model", "all"):
        for size in args.sizes:
            for kind in ("train", "infer"):
                out = subprocess.run([sys.executable, __file__, "--case", f"{size}:{kind}", "--batch", str(args.batch),
                                      "--steps", str(args.steps)], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{row['size']:6} {row['kind']:6} {row['images']} images: {row['s_per_step']:8.3f} s/step, "
                      f"{row['images_per_s']:7.3f} images/s, peak {row['peak_mb']} MB (before {row['rss_before_mb']} MB)")


if __name__ == "__main__":
    main()
