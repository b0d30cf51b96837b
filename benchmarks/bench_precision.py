"""fp32 vs bf16 autocast on this CPU: inference and a training step, each ratio against fp32 in the same run.

Issue target: where the hardware runs bf16 natively (CPU with AVX-512 BF16 or AMX, recent GPUs) a bf16 step is at
least 2x faster than fp32. Where bf16 is not native the script says so and measures nothing in bf16 (it would take
minutes: `s5_hf.precision` quotes the measured factor instead).

Cases, each in a fresh subprocess (its own peak RSS, VmHWM), model = the single-task S5 model (the S4P shape,
iSAID's 16 classes; the MoE-MDF model runs the same layers plus routing):
* inference: `model(pixel_values)` under `torch.no_grad()`, batch `--batch`.
* training: supervised loss (`labels=`), backward, AdamW step, batch `--batch` (>= 2 for BatchNorm).
bf16 = `torch.autocast("cpu", dtype=torch.bfloat16)` around the forward (and loss); weights, gradients and the
optimizer stay fp32, as in `accelerate --mixed_precision bf16`. bf16-weights (inference only) = the model and
inputs converted with `.to(torch.bfloat16)`, as `--dtype bfloat16` in RS4P scoring does: no per-call weight casts. One warm-up call (counting the FLOPs with
`torch.utils.flop_counter`), then `--steps` timed calls; the minimum wall time is reported (the machine may be shared), and the minimum
process CPU time, which other processes on a shared machine disturb less.
Each line also gives the fraction of this machine's measured fp32 / bf16 GEMM rate (benchmarks/machine.py).

`--profile` adds, for inference, the operators whose time did not shrink in bf16 (torch.profiler, self CPU time
per operator name, fp32 vs bf16): the ops that autocast keeps in fp32 or that are memory-bound.

    python benchmarks/bench_precision.py                               # small 128 px + ViT-B 512 px (~10 min)
    python benchmarks/bench_precision.py --sizes small --steps 1       # smoke run, seconds
    python benchmarks/bench_precision.py --clock cpu                   # 1 thread, CPU times: for a shared machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys

import torch

from machine import case_line, count_flops, machine_line, measure_matmul_rates, peak_memory_mb, time_calls
from memory import current_rss_mb
from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.precision import native_dtype_report

SMALL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, out_indices=[1, 2, 3, 4],
             decoder_hidden_size=64)
SIZES = {"small": dict(image_size=128, steps=5), "vit-b": dict(image_size=512, steps=2)}
#: precision -> (autocast dtype, weight dtype)
PRECISIONS = {"fp32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.float32),
              "bf16-weights": (torch.float32, torch.bfloat16)}
KIND_PRECISIONS = {"inference": ["fp32", "bf16", "bf16-weights"], "training": ["fp32", "bf16"]}


def build(size: str) -> S5ForSemanticSegmentation:
    image_size = SIZES[size]["image_size"]
    if size == "small":
        config = S5Config(**SMALL, image_size=image_size, tasks=["isaid"])
    else:
        config = S5Config.from_preset(size, image_size=image_size, tasks=["isaid"])
    return S5ForSemanticSegmentation(config)


def autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()


def top_ops(fn, rows: int = 400) -> dict[str, float]:
    """Self CPU milliseconds per operator name over one call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()[:rows]}


def run_case(size: str, kind: str, precision: str, batch: int, steps: int, profile_ops: bool,
             threads: int | None) -> dict:
    """Runs in a subprocess: build, warm up (counting FLOPs), time `steps` calls."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype, weights = PRECISIONS[precision]
    image_size = SIZES[size]["image_size"]
    generator = torch.Generator().manual_seed(0)
    model = build(size).to(weights)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator).to(weights)
    if kind == "inference":
        model.eval()

        def call():
            with torch.no_grad(), autocast(dtype):
                model(pixel_values)
    else:
        model.train()
        labels = torch.randint(0, model.config.tasks[0].num_labels, (batch, image_size, image_size),
                               generator=generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)

        def call():
            with autocast(dtype):
                loss = model(pixel_values, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    baseline = current_rss_mb()
    flops = count_flops(call)  # also the warm-up (oneDNN primitive creation, AdamW state)
    times, cpu_times = time_calls(call, steps)
    result = {"seconds": min(times), "mean_seconds": sum(times) / len(times), "cpu_seconds": min(cpu_times),
              "flops": flops,
              "baseline_mb": baseline, "peak_mb": peak_memory_mb(), "threads": torch.get_num_threads()}
    if profile_ops:
        result["ops"] = top_ops(call)
    return result


def spawn(size: str, kind: str, precision: str, batch: int, steps: int, profile_ops: bool,
          threads: int | None) -> dict:
    args = json.dumps([size, kind, precision, batch, steps, profile_ops, threads])
    out = subprocess.run([sys.executable, __file__, "--_case", args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"case {size}/{kind}/{precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_op_comparison(fp32_ops: dict[str, float], bf16_ops: dict[str, float], rows: int = 12) -> None:
    """Operators by bf16 self time, with their fp32 time: those with a ratio near or above 1 did not speed up."""
    total32, total16 = sum(fp32_ops.values()), sum(bf16_ops.values())
    print(f"    operators by bf16 self CPU time (total fp32 {total32:.0f} ms, bf16 {total16:.0f} ms):")
    print(f"    {'operator':42} {'fp32 ms':>9} {'bf16 ms':>9} {'bf16/fp32':>9} {'share of bf16':>13}")
    for name, ms in sorted(bf16_ops.items(), key=lambda kv: -kv[1])[:rows]:
        base = fp32_ops.get(name)
        ratio = f"{ms / base:9.2f}" if base else f"{'new':>9}"
        base_text = f"{base:9.1f}" if base is not None else f"{'-':>9}"
        print(f"    {name[:42]:42} {base_text} {ms:9.1f} {ratio} {100 * ms / total16:12.1f}%")


def bench_size(size: str, batch: int, steps: int, rates, profile_ops: bool, threads: int | None) -> None:
    image_size = SIZES[size]["image_size"]
    cpu_clock = rates.clock == "cpu"
    print(f"\n{size} single-task S5 at {image_size} px, batch {batch}, 1 warm-up + {steps} timed call(s) (min), "
          f"fresh subprocess per case, CPU threads={threads or torch.get_num_threads()}, "
          f"times: {'process CPU' if cpu_clock else 'wall'}")
    for kind, precisions in KIND_PRECISIONS.items():
        results = {}
        for precision in precisions:
            r = results[precision] = spawn(size, kind, precision, batch, steps,
                                           profile_ops and kind == "inference" and precision != "bf16-weights", threads)
            low = torch.float32 if precision == "fp32" else torch.bfloat16
            seconds = r["cpu_seconds"] if cpu_clock else r["seconds"]
            other = f"wall min {r['seconds']:.3g} s" if cpu_clock else f"process CPU {r['cpu_seconds']:.3g} s"
            print(case_line(f"  {kind:9} {precision:12}", seconds, r["flops"], rates, low, r["peak_mb"])
                  + f" ({other}, wall mean {r['mean_seconds']:.3g} s, RSS after build {r['baseline_mb']:.0f} MB)")
        fp32 = results["fp32"]
        for precision in precisions[1:]:
            low = results[precision]
            wall, cpu = fp32["seconds"] / low["seconds"], fp32["cpu_seconds"] / low["cpu_seconds"]
            verdict = "meets" if (cpu if cpu_clock else wall) >= 2 else "MISSES"
            print(f"  {kind}: {precision} speed-up over fp32 (baseline): process CPU time x{cpu:.2f}, wall x{wall:.2f} "
                  f"(min), x{fp32['mean_seconds'] / low['mean_seconds']:.2f} (mean); {verdict} the x2 target "
                  f"({'CPU' if cpu_clock else 'wall'}); peak RSS x{low['peak_mb'] / fp32['peak_mb']:.2f}")
        if "ops" in results["bf16"]:
            print_op_comparison(results["fp32"]["ops"], results["bf16"]["ops"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,vit-b", help="comma-separated: small, vit-b (default both)")
    parser.add_argument("--steps", type=int, help="timed calls per case (default 5 small, 2 ViT-B)")
    parser.add_argument("--batch", type=int, default=2, help="images per call (>= 2: BatchNorm in training)")
    parser.add_argument("--profile", action="store_true", help="per-operator fp32 vs bf16 times (inference)")
    parser.add_argument("--threads", type=int, help="torch threads in every case and in the GEMM-rate measurement "
                        "(default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: report process CPU times and per-CPU-second GEMM rates with 1 thread (robust "
                             "on a machine shared with other work; implies --threads 1)")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        print(json.dumps(run_case(*json.loads(args._case))))
        return
    if args.clock == "cpu":
        if args.threads not in (None, 1):
            parser.error("--clock cpu measures one thread: use --threads 1 (or leave it out)")
        args.threads = 1
    if args.batch < 2:
        parser.error("--batch must be at least 2 (BatchNorm in training mode)")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    report = native_dtype_report("cpu", torch.bfloat16, measure=True)
    print(report.describe())
    if not report.native:
        print("bf16 is not native on this CPU: nothing to compare (an emulated bf16 run is the slow path that "
              "s5_hf.precision.check_precision refuses by default). Run this on a CPU with AVX-512 BF16 / AMX.")
        return
    rates = measure_matmul_rates(clock=args.clock)
    print(rates.describe())
    for size in sizes:
        bench_size(size, args.batch, args.steps or SIZES[size]["steps"], rates, args.profile, args.threads)
    print(f"\nafter the cases, {measure_matmul_rates(clock=args.clock).describe()} (the machine's load may have "
          f"changed)")


if __name__ == "__main__":
    main()
