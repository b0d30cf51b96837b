"""Oriented delta box coder of the Oriented R-CNN RoI head: oriented proposals -> oriented boxes.

Against a proposal (x_p, y_p, w_p, h_p, a_p), with the offset expressed in the proposal's own frame:
    dx = ( cos a_p (x - x_p) + sin a_p (y - y_p)) / w_p,   dy = (-sin a_p (x - x_p) + cos a_p (y - y_p)) / h_p,
    dw = log(w' / w_p),  dh = log(h' / h_p),  da = a' - a_p,
where (w', h', a') is the form of the target among (w, h, a) and (h, w, a + pi/2) whose angle difference,
taken modulo pi into [-pi/2, pi/2), is smaller in magnitude (the same rectangle; this avoids the jump at the
angle boundary). Deltas are divided by the stds (0.1, 0.1, 0.2, 0.2, 0.1). Decoding inverts it and returns the
regular form.
"""

from __future__ import annotations

import math

import torch

from .obb_geometry import normalize_angle, regularize_obb

DEFAULT_STDS = (0.1, 0.1, 0.2, 0.2, 0.1)
_MAX_RATIO = abs(math.log(16.0 / 1000))


def delta_encode(proposals: torch.Tensor, boxes: torch.Tensor, stds=DEFAULT_STDS) -> torch.Tensor:
    px, py, pw, ph, pa = proposals.unbind(-1)
    gx, gy, gw, gh, ga = boxes.unbind(-1)
    cos, sin = torch.cos(pa), torch.sin(pa)
    dx = (cos * (gx - px) + sin * (gy - py)) / pw
    dy = (-sin * (gx - px) + cos * (gy - py)) / ph
    d1 = normalize_angle(ga - pa)
    d2 = normalize_angle(ga - pa + math.pi / 2)
    first = d1.abs() < d2.abs()
    tw, th = torch.where(first, gw, gh), torch.where(first, gh, gw)
    da = torch.where(first, d1, d2)
    deltas = torch.stack([dx, dy, torch.log(tw / pw), torch.log(th / ph), da], dim=-1)
    return deltas / deltas.new_tensor(stds)


def delta_decode(proposals: torch.Tensor, deltas: torch.Tensor, stds=DEFAULT_STDS) -> torch.Tensor:
    d = deltas * deltas.new_tensor(stds)
    px, py, pw, ph, pa = proposals.unbind(-1)
    cos, sin = torch.cos(pa), torch.sin(pa)
    x = px + pw * d[..., 0] * cos - ph * d[..., 1] * sin
    y = py + pw * d[..., 0] * sin + ph * d[..., 1] * cos
    w = pw * d[..., 2].clamp(-_MAX_RATIO, _MAX_RATIO).exp()
    h = ph * d[..., 3].clamp(-_MAX_RATIO, _MAX_RATIO).exp()
    return regularize_obb(torch.stack([x, y, w, h, pa + d[..., 4]], dim=-1))
