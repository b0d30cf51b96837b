"""torch.compile (inductor) vs eager for a training step (forward + backward, no optimizer) of S5, same process.

The training programs have `--torch_compile` (meant for GPUs). On a CPU it gains little: the step is GEMM-bound
(the matmuls already run in oneDNN/MKL at a large fraction of the machine's rate), so fusing the elementwise ops
saves little, while the compilation costs a minute or more per model and task pattern (a mixed-task batch
recompiles for every routing pattern). Inference has `s5-segment --torch_compile`
(benchmarks/bench_inference.py --compare_compile).

    python benchmarks/bench_compile.py                 # ViT-B, 512 px, batch 2, one task (a few minutes)
    python benchmarks/bench_compile.py --preset small  # seconds
"""

from __future__ import annotations

import time

import torch
from machine import case_line, count_flops, machine_line, measure_matmul_rates  # benchmarks/machine.py

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.cli import ArgumentParser

SMALL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, out_indices=[1, 2, 3, 4],
             decoder_hidden_size=64)


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit-b", help="vit-b (512 px) or small (256 px)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.preset == "small":
        config, size = S5Config(**SMALL, image_size=256, tasks=["potsdam"]), 256
    else:
        config, size = S5Config.from_preset(args.preset, tasks=["potsdam"]), 512
    model = S5ForSemanticSegmentation(config).train()
    images, labels = torch.randn(2, 3, size, size), torch.randint(0, 6, (2, size, size))

    def step(module) -> None:
        module(images, labels=labels).loss.backward()
        module.zero_grad(set_to_none=True)

    print(machine_line())
    rates = measure_matmul_rates()
    flops = count_flops(lambda: step(model))
    print(f"{args.preset} training step (forward + backward), {size} px, batch 2, fp32, {torch.get_num_threads()} "
          f"threads; best of {args.steps} steps after the first")
    best = {}
    for name, module in (("eager (baseline)", model), ("torch.compile (inductor)", torch.compile(model))):
        start = time.perf_counter()
        step(module)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step(module)
            times.append(time.perf_counter() - start)
        best[name] = min(times)
        print(f"  {name}: first step {first:.1f} s; " + case_line("steady step", min(times), flops, rates))
    ratio = best["eager (baseline)"] / best["torch.compile (inductor)"]
    print(f"  speed-up of the compiled step: x{ratio:.2f}")


if __name__ == "__main__":
    main()
