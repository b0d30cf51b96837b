"""IoU of oriented boxes by exact polygon intersection, batched, pure PyTorch.

For two rectangles A and B the intersection is a convex polygon whose vertices are among
  (1) the corners of A inside B, (2) the corners of B inside A, (3) the crossing points of the 4 x 4 edge pairs,
24 candidates at most. Ordering the valid candidates by their angle around their mean and applying the
shoelace formula, area = 1/2 |sum_i x_i y_(i+1) - x_(i+1) y_i|, gives the intersection area exactly (up to
rounding); IoU = inter / (area_A + area_B - inter). Boxes of zero area have IoU 0 with everything.
"""

from __future__ import annotations

import torch

from .obb_geometry import obb_to_corners, obb_to_hbb

# Pairs per chunk: 24 candidate points x 2 coordinates per pair keeps a chunk near 100 MB in float32.
_PAIRS_PER_CHUNK = 500_000


def _intersection_area(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection areas of boxes1[i] and boxes2[i]: both `(P, 5)`; returns `(P,)`."""
    c1, c2 = obb_to_corners(boxes1), obb_to_corners(boxes2)  # (P, 4, 2)
    scale = torch.maximum(boxes1[:, 2:4].abs().amax(-1), boxes2[:, 2:4].abs().amax(-1)).clamp(min=1e-12)
    tol = 1e-6 * scale  # points on an edge count as inside: the polygon is the same either way

    def inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        # (P, 4, 2) points vs (P, 5) boxes: |u| <= w/2 and |v| <= h/2 in the box's own frame.
        d = points - boxes[:, None, :2]
        cos, sin = torch.cos(boxes[:, None, 4]), torch.sin(boxes[:, None, 4])
        u = d[..., 0] * cos + d[..., 1] * sin
        v = -d[..., 0] * sin + d[..., 1] * cos
        return (u.abs() <= boxes[:, None, 2] / 2 + tol[:, None]) & (v.abs() <= boxes[:, None, 3] / 2 + tol[:, None])

    in1 = inside(c1, boxes2)
    in2 = inside(c2, boxes1)

    # Edge i of A: p + t r, t in [0, 1]; edge j of B: q + s e, s in [0, 1].
    p, r = c1, c1.roll(-1, dims=1) - c1  # (P, 4, 2)
    q, e = c2, c2.roll(-1, dims=1) - c2
    p, r = p[:, :, None], r[:, :, None]  # (P, 4, 1, 2)
    q, e = q[:, None], e[:, None]  # (P, 1, 4, 2)
    qp = q - p

    def cross(a, b):
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    denom = cross(r, e)  # (P, 4, 4)
    safe = torch.where(denom.abs() > 1e-12 * scale[:, None, None] ** 2, denom, torch.ones_like(denom))
    t = cross(qp, e) / safe
    s = cross(qp, r) / safe
    eps = 1e-7
    hit = (denom.abs() > 1e-12 * scale[:, None, None] ** 2) & (t >= -eps) & (t <= 1 + eps) & (s >= -eps) & (s <= 1 + eps)
    crossings = p + t[..., None] * r  # (P, 4, 4, 2)

    points = torch.cat([c1, c2, crossings.flatten(1, 2)], dim=1)  # (P, 24, 2)
    valid = torch.cat([in1, in2, hit.flatten(1, 2)], dim=1)  # (P, 24)
    count = valid.sum(1)
    weights = valid.to(points.dtype)
    center = (points * weights[..., None]).sum(1) / count.clamp(min=1)[:, None].to(points.dtype)
    rel = points - center[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, float("inf")))
    order = angle.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand(-1, -1, 2))
    valid = valid.gather(1, order)
    # Invalid candidates (sorted last) become copies of the first vertex: they add zero-length edges only.
    rel = torch.where(valid[..., None], rel, rel[:, :1].expand_as(rel))
    nxt = rel.roll(-1, dims=1)
    area = 0.5 * cross(rel, nxt).sum(1).abs()
    return torch.where(count >= 3, area, torch.zeros_like(area))


def obb_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """IoU of oriented `(cx, cy, w, h, angle)` boxes.

    Args:
        boxes1: `(N, 5)`. boxes2: `(M, 5)`.
        aligned: if True, N == M and the result is `(N,)` (IoU of row i with row i); otherwise `(N, M)`.
    """
    if boxes1.shape[-1] != 5 or boxes2.shape[-1] != 5:
        raise ValueError(f"Oriented boxes must be (N, 5), got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}.")
    dtype = boxes1.dtype if boxes1.dtype == torch.float64 else torch.float32
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    area1 = boxes1[:, 2].clamp(min=0) * boxes1[:, 3].clamp(min=0)
    area2 = boxes2[:, 2].clamp(min=0) * boxes2[:, 3].clamp(min=0)
    if aligned:
        if boxes1.shape[0] != boxes2.shape[0]:
            raise ValueError(f"aligned=True needs as many boxes on both sides, got {boxes1.shape[0]} and {boxes2.shape[0]}.")
        inter = torch.cat([_intersection_area(boxes1[i : i + _PAIRS_PER_CHUNK], boxes2[i : i + _PAIRS_PER_CHUNK])
                           for i in range(0, boxes1.shape[0], _PAIRS_PER_CHUNK)]) if boxes1.shape[0] else area1
        return inter / (area1 + area2 - inter).clamp(min=eps)
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_zeros(n, m)
    if n == 0 or m == 0:
        return out
    # Only pairs whose axis-aligned hulls overlap can intersect: the exact polygon step runs on those alone.
    h1, h2 = obb_to_hbb(boxes1), obb_to_hbb(boxes2)
    rows = max(1, _PAIRS_PER_CHUNK // m)
    for start in range(0, n, rows):
        k = min(rows, n - start)
        hull1 = h1[start : start + k, None]
        touching = ((torch.minimum(hull1[..., 2], h2[None, :, 2]) >= torch.maximum(hull1[..., 0], h2[None, :, 0]))
                    & (torch.minimum(hull1[..., 3], h2[None, :, 3]) >= torch.maximum(hull1[..., 1], h2[None, :, 1])))
        i, j = touching.nonzero(as_tuple=True)
        if i.numel() == 0:
            continue
        inter = _intersection_area(boxes1[start + i], boxes2[j])
        out[start + i, j] = inter / (area1[start + i] + area2[j] - inter).clamp(min=eps)
    return out
