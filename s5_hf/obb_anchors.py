"""Horizontal anchors of the oriented RPN (FPN style): per level one base size (= stride), scale 8 and
ratios 0.5/1/2, i.e. per location boxes of width `stride * scale / sqrt(r)` and height
`stride * scale * sqrt(r)` centred on `(x * stride, y * stride)`. Order: locations row-major, then ratios, then
scales, the order in which a head's `(A * k, H, W)` output is flattened by `permute(1, 2, 0).reshape(-1, k)`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def base_anchors(stride: int, scales: Sequence[float] = (8,), ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """`(len(ratios) * len(scales), 4)` anchors `(x1, y1, x2, y2)` centred on the origin."""
    out = []
    for r in ratios:
        for s in scales:
            w = stride * s / math.sqrt(r)
            h = stride * s * math.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(
    size: tuple[int, int], stride: int, scales: Sequence[float] = (8,), ratios: Sequence[float] = (0.5, 1.0, 2.0),
    device: torch.device | None = None,
) -> torch.Tensor:
    """Anchors of a `size = (H, W)` feature map: `(H * W * A, 4)`."""
    height, width = size
    base = base_anchors(stride, scales, ratios).to(device)
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)
