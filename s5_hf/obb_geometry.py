"""Oriented boxes: the conventions every detection module of s5_hf shares.

An oriented box is `(cx, cy, w, h, angle)` in pixels of an image whose y axis points down, `angle` in radians.
Its corners are `center + R(angle) @ (+-w/2, +-h/2)` with `R(a) = [[cos a, -sin a], [sin a, cos a]]`, listed
in the order (+w/2,-h/2)... see `obb_to_corners`. Because y points down, a positive angle turns the box
clockwise on screen (the mmrotate/OBBDetection "le90" convention).

Regular ("le90") form: `w >= h` and `angle` in `[-pi/2, pi/2)`. Every box has exactly one regular form
(a square keeps `w == h`); `regularize_obb` gives it.
"""

from __future__ import annotations

import math

import torch


def normalize_angle(angle: torch.Tensor, period: float = math.pi) -> torch.Tensor:
    """Map angles into `[-period/2, period/2)`: `a - period * floor(a / period + 1/2)`."""
    return angle - period * torch.floor(angle / period + 0.5)


def regularize_obb(boxes: torch.Tensor) -> torch.Tensor:
    """Regular form of `(..., 5)` boxes: swap w and h where `h > w` (adding pi/2 to the angle), then bring the
    angle into `[-pi/2, pi/2)` (a rectangle is unchanged by a half turn)."""
    cx, cy, w, h, a = boxes.unbind(-1)
    swap = h > w
    w2, h2 = torch.where(swap, h, w), torch.where(swap, w, h)
    a = normalize_angle(torch.where(swap, a + math.pi / 2, a))
    return torch.stack([cx, cy, w2, h2, a], dim=-1)


def obb_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """`(..., 5)` boxes -> `(..., 4, 2)` corners, in a consistent turning order:
    `c + R(a) @ (w/2, -h/2)`, `(w/2, h/2)`, `(-w/2, h/2)`, `(-w/2, -h/2)`."""
    cx, cy, w, h, a = boxes.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    sx = torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=boxes.dtype, device=boxes.device)
    sy = torch.tensor([-0.5, 0.5, 0.5, -0.5], dtype=boxes.dtype, device=boxes.device)
    dx = w[..., None] * sx  # (..., 4) offsets along the box's own axes
    dy = h[..., None] * sy
    x = cx[..., None] + cos[..., None] * dx - sin[..., None] * dy
    y = cy[..., None] + sin[..., None] * dx + cos[..., None] * dy
    return torch.stack([x, y], dim=-1)


def rectangle_corners_to_obb(corners: torch.Tensor) -> torch.Tensor:
    """`(..., 4, 2)` corners of a rectangle, consecutive around the outline -> regular `(..., 5)` boxes.

    w = |p1 - p0|, h = |p2 - p1|, angle = direction of p0 -> p1 (atan2), centre = mean of the corners.
    """
    center = corners.mean(dim=-2)
    e1 = corners[..., 1, :] - corners[..., 0, :]
    e2 = corners[..., 2, :] - corners[..., 1, :]
    w = e1.norm(dim=-1)
    h = e2.norm(dim=-1)
    angle = torch.atan2(e1[..., 1], e1[..., 0])
    return regularize_obb(torch.stack([center[..., 0], center[..., 1], w, h, angle], dim=-1))


def polygon_to_obb(points: torch.Tensor) -> torch.Tensor:
    """`(..., 4, 2)` quadrilaterals (DOTA/DIOR-R annotations, not always exact rectangles) -> regular boxes.

    Takes the minimum-area rectangle whose sides are parallel to one of the quadrilateral's edges (the
    minimum-area enclosing rectangle of a convex polygon has a side on one of its edges).
    """
    best = None
    for i in range(4):
        edge = points[..., (i + 1) % 4, :] - points[..., i, :]
        angle = torch.atan2(edge[..., 1], edge[..., 0])
        cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
        # Coordinates in the frame turned by `angle`: u along the edge, v across it.
        u = points[..., 0] * cos + points[..., 1] * sin
        v = -points[..., 0] * sin + points[..., 1] * cos
        u0, u1 = u.min(-1).values, u.max(-1).values
        v0, v1 = v.min(-1).values, v.max(-1).values
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        c, s = cos[..., 0], sin[..., 0]
        box = torch.stack([cu * c - cv * s, cu * s + cv * c, u1 - u0, v1 - v0, angle], dim=-1)
        area = box[..., 2] * box[..., 3]
        if best is None:
            best, best_area = box, area
        else:
            better = area < best_area - 1e-9
            best = torch.where(better[..., None], box, best)
            best_area = torch.where(better, area, best_area)
    return regularize_obb(best)


def obb_to_hbb(boxes: torch.Tensor) -> torch.Tensor:
    """Axis-aligned hull `(x1, y1, x2, y2)` of `(..., 5)` oriented boxes: half-extents
    `|w/2 cos a| + |h/2 sin a|` and `|w/2 sin a| + |h/2 cos a|`."""
    cx, cy, w, h, a = boxes.unbind(-1)
    cos, sin = torch.cos(a).abs(), torch.sin(a).abs()
    hx = (w * cos + h * sin) / 2
    hy = (w * sin + h * cos) / 2
    return torch.stack([cx - hx, cy - hy, cx + hx, cy + hy], dim=-1)


def hbb_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise IoU `(N, M)` of axis-aligned `(x1, y1, x2, y2)` boxes: overlap area / (area1 + area2 - overlap)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=eps)
