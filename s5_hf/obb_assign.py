"""Max-IoU assignment and random sampling of detection training targets.

Assignment of boxes (anchors or proposals) to ground truths from an IoU matrix `(num_gt, num_boxes)`:
  - a box whose best IoU is < `neg_iou_thr` is negative (0); >= `pos_iou_thr` is positive (its best gt, 1-based);
    in between it is ignored (-1);
  - with `match_low_quality`, every gt whose best IoU is >= `min_pos_iou` also claims every box that reaches
    that best IoU, so a gt with no box above `pos_iou_thr` still gets one.
Sampling: at most `num * pos_fraction` positives, chosen at random; negatives fill the rest of `num`.
RPN: thresholds 0.7 / 0.3, min 0.3, low-quality matches, 256 samples, 50 % positive.
RoI head: 0.5 / 0.5, min 0.5, no low-quality matches, 512 samples, 25 % positive, gts added as proposals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AssignResult:
    gt_indices: torch.LongTensor  # (num_boxes,): -1 ignored, 0 negative, k > 0 = gt k - 1
    max_overlaps: torch.Tensor  # (num_boxes,)


def max_iou_assign(
    overlaps: torch.Tensor, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float, match_low_quality: bool
) -> AssignResult:
    num_gt, num_boxes = overlaps.shape
    assigned = overlaps.new_full((num_boxes,), -1, dtype=torch.long)
    if num_gt == 0 or num_boxes == 0:
        assigned.fill_(0)
        return AssignResult(assigned, overlaps.new_zeros(num_boxes))
    max_overlaps, argmax = overlaps.max(dim=0)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    positive = max_overlaps >= pos_iou_thr
    assigned[positive] = argmax[positive] + 1
    if match_low_quality:
        gt_max = overlaps.max(dim=1).values
        for g in range(num_gt):
            if gt_max[g] >= min_pos_iou:
                assigned[overlaps[g] == gt_max[g]] = g + 1
    return AssignResult(assigned, max_overlaps)


def random_sample(
    gt_indices: torch.LongTensor, num: int, pos_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Indices of the sampled positive and negative boxes."""
    positives = (gt_indices > 0).nonzero(as_tuple=True)[0]
    negatives = (gt_indices == 0).nonzero(as_tuple=True)[0]
    num_pos = min(int(num * pos_fraction), positives.numel())
    positives = positives[torch.randperm(positives.numel(), generator=generator)[:num_pos].to(positives.device)]
    num_neg = min(num - num_pos, negatives.numel())
    negatives = negatives[torch.randperm(negatives.numel(), generator=generator)[:num_neg].to(negatives.device)]
    return positives, negatives
