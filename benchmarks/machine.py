"""The machine's own limit, and the one line in which every benchmark case reports against it.

Absolute times differ from machine to machine; the fraction of the machine's own matmul rate that a case reaches
does much less. So every case prints, next to its wall time, its FLOPs (`torch.utils.flop_counter`, which counts
matmuls, convolutions and attention: 2 FLOPs per multiply-add) and the fraction of this machine's fp32 (and bf16,
where native) GEMM rate measured in the same run, plus its peak memory:

    rates = measure_matmul_rates()                          # square 2048^2 GEMMs, best of 5
    flops = count_flops(lambda: model(pixel_values))         # one call, outside the timing
    print(case_line("ViT-B inference", seconds, flops, rates, torch.float32, peak_memory_mb()))

    python benchmarks/machine.py        # this machine: CPU, threads, native types, measured GEMM rates

(Scripts in this folder import each other by module name: run them from here or with this folder on sys.path.)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from memory import peak_rss_mb  # benchmarks/memory.py
from s5_hf.precision import cpu_features, native_dtype_report


@dataclass(frozen=True)
class MatmulRates:
    """Best measured GEMM rates in GFLOP/s; `bfloat16` is None where bf16 is not native (emulated bf16 would take
    minutes to measure and is never a target)."""

    float32: float
    bfloat16: float | None
    size: int
    device: str
    clock: str = "wall"

    def rate(self, dtype: torch.dtype) -> float | None:
        return {torch.float32: self.float32, torch.bfloat16: self.bfloat16}.get(dtype)

    def describe(self) -> str:
        bf16 = f"{self.bfloat16:.0f} GFLOP/s" if self.bfloat16 is not None else "not measured (not native)"
        per = "" if self.clock == "wall" else f" per CPU-second ({torch.get_num_threads()} thread(s))"
        return f"{self.size}^2 GEMM on {self.device}: fp32 {self.float32:.0f} GFLOP/s, bf16 {bf16}{per}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def matmul_rate(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5,
                device: str | torch.device = "cpu", clock: str = "wall") -> float:
    """Best-of-`repeats` GFLOP/s of a `size` x `size` matmul in `dtype` (one warm-up call first).

    `clock="cpu"` divides by this process's CPU time instead of wall time: with one thread, the rate of the core
    while it runs, which other load on a shared machine hardly changes (use it with `torch.set_num_threads(1)`;
    with more threads, CPU time also counts threads that wait)."""
    device = torch.device(device)
    now = CLOCKS[clock]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    torch.matmul(a, b)
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = now()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, now() - start)
    return 2 * size**3 / max(best, 1e-9) / 1e9


def measure_matmul_rates(size: int = 2048, repeats: int = 5, device: str | torch.device = "cpu",
                         clock: str = "wall") -> MatmulRates:
    """This machine's fp32 GEMM rate, and its bf16 rate where bf16 is native (`s5_hf.precision`)."""
    fp32 = matmul_rate(torch.float32, size, repeats, device, clock)
    bf16 = None
    if native_dtype_report(device, torch.bfloat16, measure=False).native:
        bf16 = matmul_rate(torch.bfloat16, size, repeats, device, clock)
    return MatmulRates(fp32, bf16, size, str(torch.device(device)), clock)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention; elementwise ops are not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_calls(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each of `repeats` calls of `fn` (CPU time is what other load on a shared
    machine does not inflate)."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return walls, cpus


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak memory of this process: `max_memory_allocated` on CUDA, the resident high-water mark (VmHWM) else."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def case_line(label: str, seconds: float, flops: int | None, rates: MatmulRates | None,
              dtype: torch.dtype = torch.float32, peak_mb: float | None = None) -> str:
    """'label: wall 1.23 s, 45.6 GFLOP, 37% of fp32 matmul rate (143 GFLOP/s), peak RSS 1234 MB'.

    A bf16 case is quoted against both rates (its own type's is the one it can reach)."""
    parts = [f"{'wall' if rates is None or rates.clock == 'wall' else 'CPU'} {seconds:.3g} s"]
    if flops is not None:
        parts.append(f"{flops / 1e9:.4g} GFLOP")
        if rates is not None and seconds > 0:
            achieved = flops / seconds / 1e9
            for name, rate in (("fp32", rates.float32), ("bf16", rates.bfloat16)):
                if rate is None or (name == "bf16" and dtype != torch.bfloat16):
                    continue
                parts.append(f"{100 * achieved / rate:.1f}% of {name} matmul rate ({rate:.0f} GFLOP/s)")
    if peak_mb is not None:
        parts.append(f"peak {'RSS' if rates is None or rates.device == 'cpu' else 'memory'} {peak_mb:.0f} MB")
    return f"{label}: " + ", ".join(parts)


def machine_line() -> str:
    """CPU model, cores, torch threads, vector ISA that torch dispatches to, and native low-precision types."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    features = cpu_features()
    native = [name for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
              if native_dtype_report("cpu", dtype, measure=False).native]
    units = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_fp16") if flag in features]
    return (f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, dispatch {torch.backends.cpu.get_cpu_capability()}, units {'/'.join(units) or 'none'}, "
            f"native low precision: {', '.join(native) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: per CPU-second of one thread (robust on a loaded machine)")
    args = parser.parse_args()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    print(machine_line())
    print(measure_matmul_rates(args.size, args.repeats, clock=args.clock).describe())


if __name__ == "__main__":
    main()
