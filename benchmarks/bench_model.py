"""Model benchmarks on CPU, each figure printed with its baseline measured in the same run.

1. A batch mixing the four MDF datasets in ONE forward vs. one forward per dataset (the official way).
   Interleaved rounds; wall and process CPU time, min and median (the machine may be shared); FLOPs and the
   fraction of this machine's measured fp32 matmul rate (benchmarks/machine.py); peak memory of each variant in
   a fresh subprocess (its VmHWM minus its resident memory after building the model). The rows are interleaved
   by task (a, b, c, d, a, b, ...), the order a data loader mixing datasets produces.
2. Training steps (forward + backward + AdamW) of the ViT-B MoE-MDF model at 512 px: steps/s and peak memory,
   with and without gradient checkpointing. Batch 2: a training batch needs at least 2 images per task
   (BatchNorm after the 1x1 pyramid pooling cannot normalise a single value per channel). Each case runs in a fresh subprocess so that its peak resident
   memory (VmHWM, benchmarks/memory.py) is its own; the baseline is the same process after building model and optimizer.
   Checkpointing is `model.set_activation_checkpointing("block")`; bench_training.py --table compares every mode.

    python benchmarks/bench_model.py             # ViT-B at 512 px (a few minutes on 2 cores)
    python benchmarks/bench_model.py --quick     # small config, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from machine import case_line, count_flops, machine_line, measure_matmul_rates  # benchmarks/machine.py
from memory import current_rss_mb, peak_rss_mb  # benchmarks/memory.py
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


def mixed_batch(preset: str, image_size: int, per_task: int):
    """The model, the images and both ways of running them: one mixed forward, or one forward per dataset."""
    torch.manual_seed(0)
    model = build(preset, image_size).eval()
    tasks = [MDF_TASKS[i % len(MDF_TASKS)] for i in range(per_task * len(MDF_TASKS))]  # interleaved datasets
    pixel_values = torch.randn(len(tasks), 3, image_size, image_size)

    @torch.no_grad()
    def one_forward():
        return model(pixel_values, task=tasks).logits

    @torch.no_grad()
    def per_dataset():  # the official way; each dataset's logits are kept, as a caller would
        return [model(pixel_values[[i for i, t in enumerate(tasks) if t == task]], task=task).logits
                for task in MDF_TASKS]

    return {"mixed": one_forward, "separate": per_dataset}


def mixed_memory_case(preset: str, image_size: int, per_task: int, variant: str) -> dict:
    """Runs in a subprocess: peak resident memory of one call of `variant` over the memory after building."""
    fn = mixed_batch(preset, image_size, per_task)[variant]
    before = current_rss_mb()
    fn()
    return {"peak_mb": peak_rss_mb(), "increase_mb": peak_rss_mb() - before}


def bench_mixed_forward(preset: str, image_size: int, per_task: int, repeats: int, rates=None) -> None:
    variants = mixed_batch(preset, image_size, per_task)
    flops = {name: count_flops(fn) for name, fn in variants.items()}  # also the warm-up call of each
    # Interleaved rounds, so that load from other processes hits both variants alike; the minimum is the least
    # disturbed measurement, the median shows the spread. CPU time of this process is reported too: on a shared
    # machine it is less disturbed than wall time.
    wall = {"mixed": [], "separate": []}
    cpu = {"mixed": [], "separate": []}
    for _ in range(repeats):
        for name, fn in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    memory = {}
    for name in variants:
        args = json.dumps([preset, image_size, per_task, name])
        out = subprocess.run([sys.executable, __file__, "--mixed-case", args], capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[mixed batch] {preset} {image_size}px, {per_task} image(s) x 4 datasets, inference, "
          f"{repeats} interleaved rounds, CPU threads={torch.get_num_threads()} (min / median)")
    for label, name in (("one forward per dataset (baseline)", "separate"), ("one mixed forward", "mixed")):
        print(f"  {label:34}: wall {min(wall[name]):7.2f} / {statistics.median(wall[name]):7.2f} s, "
              f"CPU {min(cpu[name]):7.2f} / {statistics.median(cpu[name]):7.2f} s, "
              f"peak +{memory[name]['increase_mb']:.0f} MB over the built model (fresh process)")
        print("    " + case_line(label, min(wall[name]), flops[name], rates, torch.float32, memory[name]["peak_mb"]))
    ratio = lambda d, f: f(d["separate"]) / f(d["mixed"])  # noqa: E731
    print(f"  speed-up of the mixed forward: wall x{ratio(wall, min):.2f} (min) x{ratio(wall, statistics.median):.2f} "
          f"(median), CPU time x{ratio(cpu, min):.2f} (min) x{ratio(cpu, statistics.median):.2f} (median); "
          f"memory increase mixed/separate x{memory['mixed']['increase_mb'] / memory['separate']['increase_mb']:.2f}")


def train_case(preset: str, image_size: int, batch: int, checkpointing: bool, steps: int) -> dict:
    """Runs in a subprocess: build, measure baseline memory, then train `steps` steps."""
    torch.manual_seed(0)
    model = build(preset, image_size).train()
    model.set_activation_checkpointing("block" if checkpointing else "none")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.05)
    tasks = [MDF_TASKS[i % 4] for i in range(batch)] if batch >= 8 else ["potsdam"] * batch
    pixel_values = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 5, (batch, image_size, image_size))
    baseline = current_rss_mb()

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(pixel_values, task=tasks, labels=labels).loss.backward()
        optimizer.step()

    seconds = timed(step, steps)
    return {"seconds_per_step": seconds, "baseline_mb": baseline, "peak_mb": peak_rss_mb()}


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
    parser.add_argument("--mixed-only", action="store_true", help="only the mixed-batch comparison")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--mixed-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(train_case(*json.loads(args.case))))
        return
    if args.mixed_case:
        print(json.dumps(mixed_memory_case(*json.loads(args.mixed_case))))
        return
    print(machine_line())
    rates = measure_matmul_rates()
    print(rates.describe())
    if args.quick:
        bench_mixed_forward("small", 128, per_task=2, repeats=3, rates=rates)
        if not args.mixed_only:
            bench_training("small", 128, batches=[2], steps=2)
    else:
        bench_mixed_forward("vit-b", 512, per_task=2, repeats=3, rates=rates)
        if not args.mixed_only:
            bench_mixed_forward("vit-b", 512, per_task=1, repeats=3, rates=rates)
            bench_training("vit-b", 512, batches=[2], steps=2)


if __name__ == "__main__":
    main()
