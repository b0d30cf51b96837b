"""Parameter counts of the full-size S5 models, built on the `meta` device (no memory is allocated).

    python -m s5_hf.hub.params        (or: s5-params; --preset vit-b for one backbone)

Compares with the paper's parameter table. The official implementation also counts parameters it never
uses: a class token (hidden_size values) and a 1-class placeholder classifier (257 values) inside each
decoder; `official_equivalent` adds them back, which makes the totals equal to the official ones exactly.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..cli import ArgumentParser
from ..configuration_s5 import PRESETS, S5Config
from ..label_sets import MDF_TASKS
from ..modeling_s5 import S5ForSemanticSegmentation

# Paper, Table/section 1.4 (millions).
PAPER_MILLIONS = {
    "vit-b": {"single": 103.2, "multiple": 160.4},
    "vit-l": {"single": 327.4, "multiple": 435.0},
    "vit-h": {"single": 663.4, "multiple": 824.5},
}
UNUSED_PLACEHOLDER_PER_DECODER = 257


def variant_config(preset: str, variant: str) -> S5Config:
    """`variant`: "single" (S4P, iSAID head), "multiple" (four-dataset MoE) or "shared" (four decoders, no experts)."""
    tasks = ["isaid"] if variant == "single" else list(MDF_TASKS)
    kwargs = {"part_features": 0} if variant == "shared" else {}
    return S5Config.from_preset(preset, tasks=tasks, **kwargs)


def count_parameters(config: S5Config | str, variant: str | None = None) -> int:
    """Parameters of the model of `config` (segmentation, or oriented detection for an `S5DetectionConfig`), or of
    a preset's `variant` (`count_parameters("vit-b", "multiple")`), built on the meta device (no memory used)."""
    if isinstance(config, str):
        config = variant_config(config, variant)
    elif variant is not None:
        raise ValueError("variant goes with a preset name, not with a configuration.")
    from ..configuration_s5_detection import S5DetectionConfig

    if isinstance(config, S5DetectionConfig):
        from ..modeling_s5_detection import S5ForOrientedDetection as model_class
    else:
        model_class = S5ForSemanticSegmentation
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def official_equivalent(preset: str, variant: str) -> int:
    decoders = 1 if variant == "single" else len(MDF_TASKS)
    return count_parameters(preset, variant) + PRESETS[preset]["hidden_size"] + decoders * UNUSED_PLACEHOLDER_PER_DECODER


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="s5-params", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), action="append",
                        help="only this backbone (repeatable; default: all presets)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    presets = args.preset or list(PRESETS)
    print(f"{'preset':8} {'variant':9} {'ours':>13} {'+unused (official)':>19} {'paper (M)':>10}")
    for preset in presets:
        for variant in ("single", "multiple", "shared"):
            paper = PAPER_MILLIONS[preset].get(variant)
            paper_text = f"{paper:.1f}" if paper is not None else "-"
            print(f"{preset:8} {variant:9} {count_parameters(preset, variant):13,} "
                  f"{official_equivalent(preset, variant):19,} {paper_text:>10}")
    b_single, b_multi = count_parameters("vit-b", "single"), count_parameters("vit-b", "multiple")
    print(f"\nOne ViT-B MoE model for four datasets: {b_multi / 1e6:.1f}M vs four single models: {4 * b_single / 1e6:.1f}M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
