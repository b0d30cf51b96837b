"""Rotated RoIAlign and the multi-level oriented RoI feature extractor of Oriented R-CNN, pure PyTorch.

For an RoI (cx, cy, w, h, a) on a map of stride s, output bin (i, j) of an `n x n` grid averages `k x k`
bilinear samples (k = sampling ratio) at the box-frame offsets
    u = -w/2 + (j + (q + 1/2) / k) * w / n,   v = -h/2 + (i + (p + 1/2) / k) * h / n,
turned into the image by the box rotation and scaled to the map (pixel centres at integer positions):
    x = (cx + u cos a - v sin a) / s - 1/2,    y = (cy + u sin a + v cos a) / s - 1/2.
A sample outside [-1, W] x [-1, H] contributes 0; one inside is clamped to [0, W-1] x [0, H-1] and
interpolated from its four neighbours (the rule of the usual RoIAlign kernels). `F.grid_sample` with
`align_corners=True` and border padding computes exactly this clamped interpolation.

The extractor enlarges every proposal by (1.4 x width, 1.2 x height) before pooling, so the head sees
some context, and picks the FPN level from the proposal's size: level = floor(log2(sqrt(w h) / 56 + 1e-6)),
clamped to the available levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _sample_points(rois: torch.Tensor, output_size: int, sampling_ratio: int, spatial_scale: float) -> torch.Tensor:
    """`(K, 5)` boxes -> `(K, n*k, n*k, 2)` sample positions (x, y) in map pixels."""
    n, k = output_size, sampling_ratio
    steps = (torch.arange(n * k, dtype=rois.dtype, device=rois.device) + 0.5) / (n * k) - 0.5  # fractions of the box
    cx, cy, w, h, a = rois.unbind(-1)
    u = steps[None, None, :] * w[:, None, None]  # (K, 1, nk)
    v = steps[None, :, None] * h[:, None, None]  # (K, nk, 1)
    cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    x = (cx[:, None, None] + u * cos - v * sin) * spatial_scale - 0.5
    y = (cy[:, None, None] + u * sin + v * cos) * spatial_scale - 0.5
    return torch.stack([x, y], dim=-1)


def rotated_roi_align(
    features: torch.Tensor, rois: torch.Tensor, output_size: int = 7, spatial_scale: float = 1.0, sampling_ratio: int = 2
) -> torch.Tensor:
    """`features` `(B, C, H, W)`, `rois` `(K, 6)` = (image index, cx, cy, w, h, angle) in input pixels ->
    `(K, C, output_size, output_size)`."""
    num, channels = rois.shape[0], features.shape[1]
    out = features.new_zeros(num, channels, output_size, output_size)
    if num == 0:
        return out
    height, width = features.shape[-2:]
    # Positions in float32 at least: half precision cannot hold pixel coordinates of large images (bf16 keeps 8
    # bits), so the sampling runs on a float32 view of the features and the result is cast back.
    work = torch.promote_types(features.dtype, torch.float32)
    points = _sample_points(rois[:, 1:].to(work), output_size, sampling_ratio, spatial_scale)
    x, y = points[..., 0], points[..., 1]
    inside = ((x >= -1) & (x <= width) & (y >= -1) & (y <= height)).to(work)
    # Normalised grid for align_corners=True: pixel 0 -> -1, pixel size-1 -> +1 (a 1-pixel axis maps to 0).
    gx = x * (2 / (width - 1)) - 1 if width > 1 else torch.zeros_like(x)
    gy = y * (2 / (height - 1)) - 1 if height > 1 else torch.zeros_like(y)
    grid = torch.stack([gx, gy], dim=-1)
    image_index = rois[:, 0].long()
    for b in image_index.unique().tolist():
        rows = (image_index == b).nonzero(as_tuple=True)[0]
        g = grid[rows]  # (k, nk, nk, 2)
        kk, s = g.shape[0], g.shape[1]
        sampled = F.grid_sample(features[b : b + 1].to(work), g.reshape(1, kk * s, s, 2), mode="bilinear",
                                padding_mode="border", align_corners=True)  # (1, C, kk*nk, nk)
        sampled = sampled.reshape(channels, kk, s, s).permute(1, 0, 2, 3) * inside[rows][:, None]
        pooled = F.avg_pool2d(sampled, kernel_size=sampling_ratio).to(features.dtype)  # mean of each bin's samples
        out = out.index_copy(0, rows, pooled)
    return out


def map_roi_levels(rois: torch.Tensor, num_levels: int, finest_scale: float = 56.0) -> torch.Tensor:
    scale = (rois[:, 3] * rois[:, 4]).clamp(min=0).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def extract_roi_features(
    feature_maps: Sequence[torch.Tensor],
    strides: Sequence[int],
    rois: torch.Tensor,
    output_size: int = 7,
    sampling_ratio: int = 2,
    enlarge: tuple[float, float] = (1.4, 1.2),
) -> torch.Tensor:
    """Pool every `(K, 6)` RoI from its FPN level after enlarging it by `enlarge` = (width, height) factors."""
    levels = map_roi_levels(rois, len(feature_maps))
    wide = rois.clone()
    wide[:, 3] = wide[:, 3] * enlarge[0]
    wide[:, 4] = wide[:, 4] * enlarge[1]
    out = feature_maps[0].new_zeros(rois.shape[0], feature_maps[0].shape[1], output_size, output_size)
    for level, (fmap, stride) in enumerate(zip(feature_maps, strides)):
        rows = (levels == level).nonzero(as_tuple=True)[0]
        if rows.numel():
            out = out.index_copy(0, rows, rotated_roi_align(fmap, wide[rows], output_size, 1.0 / stride, sampling_ratio))
    return out
