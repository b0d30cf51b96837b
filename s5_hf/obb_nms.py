"""Greedy non-maximum suppression for oriented and axis-aligned boxes, pure PyTorch.

Boxes are visited by descending score; a box is kept unless its IoU with an already kept box exceeds the
threshold (strictly greater, as mmcv's NMS does). `batched_*` variants suppress only within the same group
(class or FPN level), one group at a time, so memory grows with the largest group, not with all boxes.
"""

from __future__ import annotations

import numpy as np
import torch

from .obb_geometry import hbb_iou
from .obb_iou import obb_iou


def _greedy(iou: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """`iou` between boxes already sorted by descending score -> positions of the kept boxes."""
    over = (iou > iou_threshold).cpu().numpy()
    n = over.shape[0]
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]  # boxes before i are decided already; marking them changes nothing
    return torch.as_tensor(keep, dtype=torch.long, device=iou.device)


def nms_from_iou(iou: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS given the IoU matrix of the boxes (e.g. one matrix shared by every class when the box
    regression is class-agnostic): indices of the kept boxes by descending score."""
    if scores.numel() == 0:
        return scores.new_zeros(0, dtype=torch.long)
    order = scores.argsort(descending=True, stable=True)
    return order[_greedy(iou[order][:, order], iou_threshold)]


def obb_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices into `boxes` `(N, 5)` of the kept boxes, by descending score."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    order = scores.argsort(descending=True, stable=True)
    return order[_greedy(obb_iou(boxes[order], boxes[order]), iou_threshold)]


def hbb_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The same for axis-aligned `(x1, y1, x2, y2)` boxes."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    order = scores.argsort(descending=True, stable=True)
    return order[_greedy(hbb_iou(boxes[order], boxes[order]), iou_threshold)]


def _batched(nms, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    keep = []
    for g in groups.unique().tolist():
        rows = (groups == g).nonzero(as_tuple=True)[0]
        keep.append(rows[nms(boxes[rows], scores[rows], iou_threshold)])
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def batched_obb_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Oriented NMS within each group (e.g. per class); the kept indices of all groups by descending score."""
    return _batched(obb_nms, boxes, scores, groups, iou_threshold)


def batched_hbb_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Axis-aligned NMS within each group (e.g. per FPN level), kept indices by descending score."""
    return _batched(hbb_nms, boxes, scores, groups, iou_threshold)
