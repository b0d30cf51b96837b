"""onnxruntime vs PyTorch on the exported single-task model (`s5_hf.inference.export`), measured in the same process.

The Potsdam head of a MoE-MDF model (`extract_task`) is exported to ONNX at the window size, its logits checked
against PyTorch (max abs difference, limit 1e-4), then the same batches run through PyTorch eager (fp32,
`torch.no_grad`, the model's own forward) and onnxruntime (CPU provider, same thread count, spinning off so that
idle threads do not steal time from the other runtime), in interleaved rounds so that load from other processes
hits both alike. Wall and process CPU time, min and median; the speed-up is PyTorch (baseline) / onnxruntime.
Each line also gives the FLOPs and the fraction of this machine's fp32 GEMM rate (benchmarks/machine.py).

    python benchmarks/bench_export.py              # ViT-B at 512 px, batch 1 and 2 (a few minutes on 2 cores)
    python benchmarks/bench_export.py --quick      # small config at 128 px, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_model import build as build_model  # benchmarks/bench_model.py
from machine import case_line, count_flops, machine_line, measure_matmul_rates, peak_memory_mb
from s5_hf import S5ForSemanticSegmentation
from s5_hf.inference.export import OnnxSegmenter, export_onnx

def build(preset: str, image_size: int) -> S5ForSemanticSegmentation:
    """bench_model's four-dataset model (the same small configuration), seeded, in eval mode."""
    torch.manual_seed(0)
    return build_model(preset, image_size).eval()


def bench(preset: str, image_size: int, batches: list[int], repeats: int, task: str = "potsdam") -> None:
    mdf = build(preset, image_size)
    model = mdf.extract_task(task).eval()
    del mdf
    cpu_clock = torch.get_num_threads() == 1  # one thread: CPU times are honest even on a loaded machine
    rates = measure_matmul_rates(clock="cpu" if cpu_clock else "wall")
    print(rates.describe())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{task}.onnx"
        start = time.perf_counter()
        export_onnx(model, path, image_size=image_size)  # also checks the logits with onnxruntime (<= 1e-4)
        print(f"[export] {preset} {task} head at {image_size}px: {time.perf_counter() - start:.1f} s, "
              f"{path.stat().st_size / 2**20:.0f} MB, logits checked against PyTorch")
        segmenter = OnnxSegmenter(path, spin=False)
        for batch in batches:
            pixel_values = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
            numpy_values = pixel_values.numpy()

            @torch.no_grad()
            def pytorch():
                return model(pixel_values).logits

            def onnxruntime():
                return segmenter(numpy_values)

            difference = float(np.abs(pytorch().numpy() - onnxruntime()).max())
            flops = count_flops(pytorch)
            wall = {"pytorch": [], "onnxruntime": []}
            cpu = {"pytorch": [], "onnxruntime": []}
            for _ in range(repeats):
                for name, fn in (("pytorch", pytorch), ("onnxruntime", onnxruntime)):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    fn()
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
            print(f"[inference] {preset} {image_size}px, batch {batch}, {repeats} interleaved rounds, "
                  f"CPU threads={torch.get_num_threads()}; max |logits difference| {difference:.2e}")
            for name in ("pytorch", "onnxruntime"):
                label = f"  {'PyTorch eager (baseline)' if name == 'pytorch' else 'onnxruntime':24}"
                seconds = min(cpu[name]) if cpu_clock else min(wall[name])
                other = f"wall min {min(wall[name]):.3g} s" if cpu_clock else f"CPU min {min(cpu[name]):.3g} s"
                print(case_line(label, seconds, flops, rates, torch.float32)
                      + f" ({other}, wall median {statistics.median(wall[name]):.3g} s)")
            ratio = lambda d, f: f(d["pytorch"]) / f(d["onnxruntime"])  # noqa: E731
            print(f"  onnxruntime speed-up: wall x{ratio(wall, min):.2f} (min) x{ratio(wall, statistics.median):.2f} "
                  f"(median), CPU time x{ratio(cpu, min):.2f} (min)")
    print(f"  peak RSS of the process (model, export, both runtimes): {peak_memory_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small config at 128 px instead of ViT-B at 512 px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads of both runtimes (default: torch's); with 1, times and "
                        "GEMM rates are per CPU-second, an honest measure on a loaded machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    if args.quick:
        bench("small", 128, [1, 2], args.repeats)
    else:
        bench("vit-b", 512, [1, 2], args.repeats)


if __name__ == "__main__":
    main()
