"""Training-step benchmarks on CPU (losses + backward + AdamW step), each ratio against a baseline from the same run.

Step kinds, all from `s5_hf.training.losses` with the model in train mode and AdamW(lr=5e-5) as the training loop
makes it (the fused kernel where it applies):

* S4P: `s4p_losses` on the single-task iSAID model (16 classes). A batch is B labeled images + B unlabeled + B
  CutMix partners (`UnlabeledTransform` layout); the step runs one no-grad eval forward of the 2B weak views and
  one training forward/backward of B labeled + B CutMix-ed strong images.
* MDF mixed: `mdf_losses(..., mixed_batch=True)` on the 4-expert MoE-MDF model, B images of each of vaihingen,
  potsdam, openearthmap, loveda in ONE forward.
* MDF per dataset: `mdf_losses(..., mixed_batch=False)`, one forward per dataset as the official code (baseline
  of the mixed step's speed-up).
* MDF mixed + gradient checkpointing (`model.set_activation_checkpointing("block")`; baseline: MDF mixed without).
* MDF one dataset (`mdf`, table mode only): the default MDF step of the issue, the 4-expert model with B images
  of one dataset (vaihingen, the first of MDF_TASKS) through `mdf_losses`.

Table mode (`--table`) is the memory/time trade-off of `model.set_activation_checkpointing(MODE)`: every mode of
`--checkpointing` (plus "none", the baseline) for every step of `--kinds`, each in a fresh subprocess, with
seconds/step (wall, and this process's CPU time), peak RSS, each ratio to "none" measured in the same run, the
step's FLOPs (`torch.utils.flop_counter`, counted on the warm-up step, so recomputation is included) and the
fraction of this machine's fp32 matmul rate measured in the same run (benchmarks/machine.py).

B = 2 (a training batch needs at least 2 images per task: BatchNorm after the 1x1 pyramid pooling). Inputs are
synthetic (random images; labels in range with a few ignore / 255 pixels; padded ignore mask and CutMix boxes).
Each case runs in a fresh subprocess, one warm-up step then --steps timed steps. Memory is the subprocess's own
high-water mark (VmHWM, which exec resets; ru_maxrss is not used because a child started by fork/vfork + exec
inherits the parent's maximum in it), against the RSS after building model, optimizer and inputs. The AdamW
state (2 x parameters) is created by the first step, so it is part of the step's extra memory. Every case allocates
as the training programs do on CPU (`--cpu_memory programs`: `s5_hf.heap.configure_cpu_memory`) unless told otherwise;
the table also counts the timed steps' minor page faults (fresh pages the kernel zeroed).

    python benchmarks/bench_training.py                          # small 128 px + ViT-B 512 px (~20-35 min, 2 cores)
    python benchmarks/bench_training.py --sizes small --steps 1  # smoke run, seconds
    python benchmarks/bench_training.py --table --sizes vit-b --kinds mdf,s4p --checkpointing elementwise,mlp,block
    python benchmarks/bench_training.py --sizes vit-b --checkpointing mlp   # the default table, every step in mode mlp
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.heap import configure_cpu_memory, limit_heap_fragmentation
from s5_hf.label_sets import MDF_TASKS, VOID_ID
from s5_hf.modeling_s5 import parse_activation_checkpointing
from s5_hf.training.loop import fused_adamw_supported
from s5_hf.training.losses import mdf_losses, s4p_losses
from machine import count_flops, machine_line, measure_matmul_rates, time_calls  # benchmarks/machine.py
from memory import current_rss_mb, peak_rss_mb  # benchmarks/memory.py (scripts run from this folder)

SMALL = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=128, out_indices=[1, 2, 3, 4],
             decoder_hidden_size=32, part_features=16)
SIZES = {"small": dict(image_size=128, steps=3), "vit-b": dict(image_size=512, steps=2)}
KINDS = {  # name -> (label, checkpointing mode)
    "s4p": ("S4P (2 lab + 2 unl + 2 partner)", None),
    "mdf_per_dataset": ("MDF per dataset (official)", None),
    "mdf_mixed": ("MDF mixed one forward", None),
    "mdf_mixed_ckpt": ("MDF mixed + grad. ckpt", "block"),
}
CPU_MEMORY = {  # --cpu_memory: how a case allocates (s5_hf.heap)
    "programs": "what the training programs set on CPU: mmap threshold + CPU block cache",
    "mmap": "glibc's mmap threshold of s5_hf.heap only",
    "glibc": "glibc's default heap",
}
MEMORY = "programs"  # the --cpu_memory of this run
TABLE_KINDS = {"mdf": "MDF step, one dataset", "s4p": "S4P step", "mdf_mixed": "MDF mixed, 4 datasets"}


def build(size: str, tasks: list[str]) -> S5ForSemanticSegmentation:
    if size == "small":
        config = S5Config(**SMALL, tasks=tasks)
    else:
        config = S5Config.from_preset(size, image_size=SIZES[size]["image_size"], tasks=tasks)
    return S5ForSemanticSegmentation(config)


def random_labels(batch: int, size: int, num_classes: int, ignore_index: int, generator: torch.Generator):
    labels = torch.randint(0, num_classes, (batch, size, size), generator=generator)
    labels[:, :2, :] = VOID_ID  # a few padding pixels
    labels[:, 2, : size // 4] = ignore_index  # and a few of the dataset's ignore id
    return labels


def unlabeled_batch(batch: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """`UnlabeledTransform` layout: weak, strong1, strong2 (float32 normalised), ignore_mask int64 (255 = pad),
    box1, box2 uint8 0/1."""
    views = [torch.randn(batch, 3, size, size, generator=generator) for _ in range(3)]
    ignore_mask = torch.zeros(batch, size, size, dtype=torch.int64)
    ignore_mask[:, -size // 8:, :] = VOID_ID  # bottom rows padded
    boxes = []
    for _ in range(2):
        box = torch.zeros(batch, size, size, dtype=torch.uint8)
        box[:, size // 4: 3 * size // 4, size // 8: size // 2] = 1
        boxes.append(box)
    return (*views, ignore_mask, *boxes)


def train_case(size: str, kind: str, batch: int, steps: int, threads: int | None, mode: str | None = None,
               flops: bool = False, memory: str = "programs") -> dict:
    """Runs in a subprocess: build model, optimizer and inputs, take the baseline RSS, then 1 + `steps` steps.

    `mode`: `set_activation_checkpointing` mode (None: the kind's own); `flops`: count the warm-up step's FLOPs;
    `memory`: a `CPU_MEMORY` setting, made before anything is allocated."""
    if memory == "programs":
        configure_cpu_memory()
    elif memory == "mmap":
        limit_heap_fragmentation()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    image_size = SIZES[size]["image_size"]
    if kind == "s4p":
        model = build(size, ["isaid"]).train()
        task = model.config.tasks[0]
        labeled = (torch.randn(batch, 3, image_size, image_size, generator=generator),
                   random_labels(batch, image_size, task.num_labels, task.ignore_index, generator))
        unlabeled, partner = unlabeled_batch(batch, image_size, generator), unlabeled_batch(batch, image_size, generator)
        images_per_step = 3 * batch

        def losses():
            return s4p_losses(model, labeled, unlabeled, partner, ignore_index=task.ignore_index, threshold=0.95)
    else:
        model = build(size, list(MDF_TASKS)).train()
        batches, ignore = {}, {}
        for task in model.config.tasks[:1] if kind == "mdf" else model.config.tasks:
            ignore[task.name] = task.ignore_index
            batches[task.name] = (
                torch.randn(batch, 3, image_size, image_size, generator=generator),
                random_labels(batch, image_size, task.num_labels, task.ignore_index, generator))
        weights = {name: 1.0 for name in batches}
        mixed = kind.startswith("mdf_mixed")
        images_per_step = batch * len(batches)

        def losses():
            return mdf_losses(model, batches, ignore, weights, mixed_batch=mixed)
    mode = mode if mode is not None else KINDS.get(kind, (None, None))[1]
    model.set_activation_checkpointing(mode or "none")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=fused_adamw_supported(model.parameters()))
    params = sum(p.numel() for p in model.parameters())
    baseline = current_rss_mb()

    def step():
        loss = losses()[0]["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (also allocates the AdamW state)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times, cpu = time_calls(step, steps)
    peak = peak_rss_mb()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    # FLOPs (recomputation included) on one more step, after the peak is read: under FlopCounterMode the same step
    # reaches a higher high-water mark (+0.4 GB for the ViT-B MDF step in block mode).
    step_flops = count_flops(step) if flops else None
    return {"seconds_per_step": sum(times) / len(times), "min_seconds": min(times), "images_per_step": images_per_step,
            "cpu_seconds_per_step": sum(cpu) / len(cpu), "baseline_mb": baseline, "peak_mb": peak,
            "params_m": params / 1e6, "threads": torch.get_num_threads(), "flops": step_flops,
            "mode": model.activation_checkpointing, "minor_faults_per_step": faults, "memory": memory}


def run_case(size: str, kind: str, batch: int, steps: int, threads: int | None, mode: str | None = None,
             flops: bool = False, memory: str | None = None) -> dict:
    args = json.dumps([size, kind, batch, steps, threads, mode, flops, memory or MEMORY])
    out = subprocess.run([sys.executable, __file__, "--_case", args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"case {size}/{kind}/{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_table(size: str, kinds: list[str], modes: list[str], batch: int, steps: int, threads: int | None) -> None:
    """The checkpointing trade-off: every mode of every step kind in a fresh subprocess, ratios to "none"."""
    rates = measure_matmul_rates()
    print(f"\n{size} at {SIZES[size]['image_size']} px, batch {batch} per stream/dataset, fp32, AdamW lr 5e-5, "
          f"1 warm-up (FLOPs counted) + {steps} timed step(s), fresh subprocess per row; {rates.describe()}")
    header = ("| step | checkpointing | s/step (min) | CPU s/step | peak RSS MB | step extra MB | peak / none "
              "| time / none | CPU / none | GFLOP/step | % of fp32 rate | page faults/step |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for kind in kinds:
        base = None
        for mode in ["none", *[m for m in modes if m != "none"]]:
            r = run_case(size, kind, batch, steps, threads, mode, flops=True)
            base = base or r
            s, gflop = r["seconds_per_step"], r["flops"] / 1e9
            print(f"| {TABLE_KINDS[kind]} | {mode} | {s:.2f} ({r['min_seconds']:.2f}) | {r['cpu_seconds_per_step']:.2f} | "
                  f"{r['peak_mb']:,.0f} | {r['peak_mb'] - r['baseline_mb']:,.0f} | {r['peak_mb'] / base['peak_mb']:.2f} | "
                  f"{s / base['seconds_per_step']:.2f} | "
                  f"{r['cpu_seconds_per_step'] / base['cpu_seconds_per_step']:.2f} | {gflop:,.0f} | "
                  f"{100 * gflop / s / rates.float32:.0f}% | {r['minor_faults_per_step'] / 1e6:.2f} M |", flush=True)
    print(f"(CPU threads per case: {base['threads']}; the fp32 rate is wall-clock GFLOP/s of {rates.size}^2 GEMMs)")


def bench_size(size: str, batch: int, steps: int, threads: int | None, mode: str | None = None) -> None:
    image_size = SIZES[size]["image_size"]
    print(f"\n{size} at {image_size} px, batch {batch} per stream/dataset, 1 warm-up + {steps} timed step(s), "
          f"AdamW lr 5e-5, fresh subprocess per row")
    header = ("| step | params M | img/step | s/step (min) | steps/s | img/s | RSS after build MB | peak MB "
              "| step extra MB |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    results = {}
    for kind, (label, _) in KINDS.items():
        r = results[kind] = run_case(size, kind, batch, steps, threads, mode if kind != "mdf_mixed_ckpt" else None)
        s = r["seconds_per_step"]
        print(f"| {label} | {r['params_m']:.1f} | {r['images_per_step']} | {s:.2f} ({r['min_seconds']:.2f}) | "
              f"{1 / s:.3f} | {r['images_per_step'] / s:.2f} | {r['baseline_mb']:,.0f} | {r['peak_mb']:,.0f} | "
              f"{r['peak_mb'] - r['baseline_mb']:,.0f} |")
    print(f"(CPU threads per case: {results['s4p']['threads']})")
    per, mixed, ckpt = results["mdf_per_dataset"], results["mdf_mixed"], results["mdf_mixed_ckpt"]
    extra = lambda r: r["peak_mb"] - r["baseline_mb"]  # noqa: E731
    print(f"  MDF mixed vs per dataset (baseline): speed-up x{per['seconds_per_step'] / mixed['seconds_per_step']:.2f}"
          f" (mean), x{per['min_seconds'] / mixed['min_seconds']:.2f} (min); "
          f"step extra memory x{extra(mixed) / extra(per):.2f}")
    print(f"  MDF mixed, gradient checkpointing vs not (baseline): step extra memory x{extra(ckpt) / extra(mixed):.2f}, "
          f"peak x{ckpt['peak_mb'] / mixed['peak_mb']:.2f}, time x{ckpt['seconds_per_step'] / mixed['seconds_per_step']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,vit-b", help="comma-separated: small, vit-b (default both)")
    parser.add_argument("--steps", type=int, help="timed steps per case (default 3 small, 2 ViT-B)")
    parser.add_argument("--batch", type=int, default=2, help="images per stream / per dataset (>= 2)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each case (default: torch's)")
    parser.add_argument("--checkpointing", help="activation checkpointing mode(s), comma-separated (see "
                        "S5PreTrainedModel.set_activation_checkpointing: none, elementwise, attention, mlp, block, "
                        "<part>:k). Default table: the mode of every step but 'MDF mixed + grad. ckpt'; --table: the "
                        "modes compared with 'none' (default elementwise,attention,mlp,block)")
    parser.add_argument("--table", action="store_true", help="the checkpointing trade-off table (see above)")
    parser.add_argument("--kinds", default="mdf,s4p", help=f"steps of --table, comma-separated: {', '.join(TABLE_KINDS)}")
    parser.add_argument("--cpu_memory", choices=list(CPU_MEMORY), default="programs", help="how every case "
                        "allocates: " + "; ".join(f"{k}: {v}" for k, v in CPU_MEMORY.items()) + " (default programs; "
                        "see s5_hf.heap and TRAINING_MEMORY.md)")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        print(json.dumps(train_case(*json.loads(args._case))))
        return
    if args.batch < 2:
        parser.error("--batch must be at least 2 (BatchNorm in training mode)")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    modes = [m.strip() for m in (args.checkpointing or "").split(",") if m.strip()]
    for mode in modes:
        try:
            parse_activation_checkpointing(mode)
        except ValueError as error:
            parser.error(str(error))
    global MEMORY
    MEMORY = args.cpu_memory
    print(machine_line() + f", cases' memory: {CPU_MEMORY[MEMORY]}")
    if args.table:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in TABLE_KINDS]
        if unknown:
            parser.error(f"unknown --kinds {unknown}; choose from {', '.join(TABLE_KINDS)}")
        for size in sizes:
            bench_table(size, kinds, modes or ["elementwise", "attention", "mlp", "block"], args.batch,
                        args.steps or SIZES[size]["steps"], args.threads)
        return
    if len(modes) > 1:
        parser.error("without --table, --checkpointing takes one mode")
    for size in sizes:
        bench_size(size, args.batch, args.steps or SIZES[size]["steps"], args.threads, modes[0] if modes else None)


if __name__ == "__main__":
    main()
