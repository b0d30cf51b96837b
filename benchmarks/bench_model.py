"""Model benchmarks on CPU, each figure printed with its baseline measured in the same run.

1. A batch mixing the four MDF datasets in ONE forward vs. one forward per dataset (the official way).
2. Training steps (forward + backward + AdamW) of the ViT-B MoE-MDF model at 512 px: steps/s and peak memory,
   with and without gradient checkpointing. Batch 2: a training batch needs at least 2 images per task
   (BatchNorm after the 1x1 pyramid pooling cannot normalise a single value per channel). Each case runs in a fresh subprocess so that its peak resident
   memory (ru_maxrss) is its own; the baseline is the same process after building model and optimizer.

    python benchmarks/bench_model.py             # ViT-B at 512 px (a few minutes on 2 cores)
    python benchmarks/bench_model.py --quick     # small config, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.label_sets import MDF_TASKS

SMALL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, out_indices=[1, 2, 3, 4],
             decoder_hidden_size=64, part_features=32)


def build(preset: str, image_size: int) -> S5ForSemanticSegmentation:
    if preset == "small":
        config = S5Config(**SMALL, image_size=image_size, tasks=list(MDF_TASKS))
    else:
        config = S5Config.from_preset(preset, image_size=image_size, tasks=list(MDF_TASKS))
    return S5ForSemanticSegmentation(config)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_mixed_forward(preset: str, image_size: int, per_task: int, repeats: int) -> None:
    model = build(preset, image_size).eval()
    tasks = [t for t in MDF_TASKS for _ in range(per_task)]
    pixel_values = torch.randn(len(tasks), 3, image_size, image_size)

    @torch.no_grad()
    def one_forward():
        model(pixel_values, task=tasks)

    @torch.no_grad()
    def per_dataset():
        for i, task in enumerate(MDF_TASKS):
            model(pixel_values[i * per_task:(i + 1) * per_task], task=task)

    mixed, separate = timed(one_forward, repeats), timed(per_dataset, repeats)
    print(f"[mixed batch] {preset} {image_size}px, {per_task} image(s) x 4 datasets, inference")
    print(f"  one forward per dataset (baseline): {separate * 1000:8.0f} ms/batch")
    print(f"  one mixed forward                 : {mixed * 1000:8.0f} ms/batch   speed-up x{separate / mixed:.2f}")


def train_case(preset: str, image_size: int, batch: int, checkpointing: bool, steps: int) -> dict:
    """Runs in a subprocess: build, measure baseline memory, then train `steps` steps."""
    torch.manual_seed(0)
    model = build(preset, image_size).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.05)
    tasks = [MDF_TASKS[i % 4] for i in range(batch)] if batch >= 8 else ["potsdam"] * batch
    pixel_values = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 5, (batch, image_size, image_size))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(pixel_values, task=tasks, labels=labels).loss.backward()
        optimizer.step()

    seconds = timed(step, steps)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds_per_step": seconds, "baseline_mb": baseline_kb / 1024, "peak_mb": peak_kb / 1024}


def bench_training(preset: str, image_size: int, batches: list[int], steps: int) -> None:
    print(f"[training step] {preset} MoE-MDF (4 experts), {image_size}px, AdamW, CPU threads={torch.get_num_threads()}")
    print(f"  {'batch':>5} {'checkpointing':>13} {'s/step':>8} {'img/s':>7} {'model+opt MB':>13} {'peak MB':>8} "
          f"{'step MB':>8}")
    results = {}
    for batch in batches:
        for checkpointing in (False, True):
            args = json.dumps([preset, image_size, batch, checkpointing, steps])
            out = subprocess.run([sys.executable, __file__, "--case", args], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[batch, checkpointing] = r
            print(f"  {batch:5d} {str(checkpointing):>13} {r['seconds_per_step']:8.2f} "
                  f"{batch / r['seconds_per_step']:7.2f} {r['baseline_mb']:13.0f} {r['peak_mb']:8.0f} "
                  f"{r['peak_mb'] - r['baseline_mb']:8.0f}")
        plain, ckpt = results[batch, False], results[batch, True]
        print(f"    checkpointing: step memory x{(ckpt['peak_mb'] - ckpt['baseline_mb']) / (plain['peak_mb'] - plain['baseline_mb']):.2f},"
              f" time x{ckpt['seconds_per_step'] / plain['seconds_per_step']:.2f} (baseline: no checkpointing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small config instead of ViT-B")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(train_case(*json.loads(args.case))))
        return
    if args.quick:
        bench_mixed_forward("small", 128, per_task=2, repeats=3)
        bench_training("small", 128, batches=[2], steps=2)
    else:
        bench_mixed_forward("vit-b", 512, per_task=1, repeats=2)
        bench_mixed_forward("vit-b", 512, per_task=2, repeats=1)
        bench_training("vit-b", 512, batches=[2], steps=2)


if __name__ == "__main__":
    main()
