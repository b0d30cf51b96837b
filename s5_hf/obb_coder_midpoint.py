"""Midpoint-offset box coder of Oriented R-CNN's RPN (6 regression targets per horizontal anchor).

An oriented box is described by its axis-aligned hull (x, y, w, h) and two offsets: Delta_alpha, from the top
edge's midpoint to the box corner on that edge, and Delta_beta, from the right edge's midpoint to the corner on
it. Against an anchor (x_a, y_a, w_a, h_a):
    dx = (x - x_a) / w_a,  dy = (y - y_a) / h_a,  dw = log(w / w_a),  dh = log(h / h_a),
    da = Delta_alpha / w,  db = Delta_beta / h,
each divided by the target stds (1, 1, 1, 1, 0.5, 0.5). Decoding places the four corners
(x + Da, y - h/2), (x + w/2, y + Db), (x - Da, y + h/2), (x - w/2, y - Db): a parallelogram, turned into a
rectangle by stretching both diagonals to the longer one (a parallelogram with equal diagonals is a rectangle).
When several corners share the top row (axis-aligned box), the rightmost is taken (da = +1/2); when several
share the right column, the lowest (db = +1/2).
"""

from __future__ import annotations

import math

import torch

from .obb_geometry import obb_to_corners, rectangle_corners_to_obb

DEFAULT_STDS = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5)
_MAX_RATIO = abs(math.log(16.0 / 1000))  # dw, dh clamp: boxes at most 1000/16 times the anchor


def _hbb_xywh(hbb: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (hbb[:, 0] + hbb[:, 2]) / 2, (hbb[:, 1] + hbb[:, 3]) / 2, hbb[:, 2] - hbb[:, 0], hbb[:, 3] - hbb[:, 1]


def midpoint_encode(anchors: torch.Tensor, boxes: torch.Tensor, stds=DEFAULT_STDS) -> torch.Tensor:
    """`anchors` `(N, 4)` as (x1, y1, x2, y2), `boxes` `(N, 5)` oriented -> `(N, 6)` normalised targets."""
    ax, ay, aw, ah = _hbb_xywh(anchors)
    corners = obb_to_corners(boxes)
    xs, ys = corners[..., 0], corners[..., 1]
    x1, x2 = xs.min(1).values, xs.max(1).values
    y1, y2 = ys.min(1).values, ys.max(1).values
    gx, gy, gw, gh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    tol = 1e-4 * torch.maximum(gw, gh).clamp(min=1e-6)
    top_x = torch.where((ys - y1[:, None]).abs() <= tol[:, None], xs, torch.full_like(xs, -float("inf"))).max(1).values
    right_y = torch.where((xs - x2[:, None]).abs() <= tol[:, None], ys, torch.full_like(ys, -float("inf"))).max(1).values
    deltas = torch.stack([
        (gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah),
        (top_x - gx) / gw.clamp(min=1e-6), (right_y - gy) / gh.clamp(min=1e-6),
    ], dim=1)
    return deltas / deltas.new_tensor(stds)


def midpoint_decode(anchors: torch.Tensor, deltas: torch.Tensor, stds=DEFAULT_STDS) -> torch.Tensor:
    """Inverse of `midpoint_encode`: `(N, 4)` anchors and `(N, 6)` deltas -> `(N, 5)` regular oriented boxes."""
    ax, ay, aw, ah = _hbb_xywh(anchors)
    d = deltas * deltas.new_tensor(stds)
    dw = d[:, 2].clamp(-_MAX_RATIO, _MAX_RATIO)
    dh = d[:, 3].clamp(-_MAX_RATIO, _MAX_RATIO)
    x, y = ax + d[:, 0] * aw, ay + d[:, 1] * ah
    w, h = aw * dw.exp(), ah * dh.exp()
    da = d[:, 4].clamp(-0.5, 0.5) * w
    db = d[:, 5].clamp(-0.5, 0.5) * h
    offsets = torch.stack([
        torch.stack([da, -h / 2], 1), torch.stack([w / 2, db], 1),
        torch.stack([-da, h / 2], 1), torch.stack([-w / 2, -db], 1),
    ], dim=1)  # (N, 4, 2), relative to the centre
    length = offsets.norm(dim=-1, keepdim=True)
    offsets = offsets * (length.max(1, keepdim=True).values / length.clamp(min=1e-12))
    return rectangle_corners_to_obb(offsets + torch.stack([x, y], 1)[:, None])
