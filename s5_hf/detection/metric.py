"""DIOR-R / DOTA mean average precision: PASCAL VOC 2007 11-point AP per class with rotated IoU.

Per class, detections of all images are sorted by descending score; each is a true positive when its best
rotated-IoU ground truth of that class and image reaches `iou_threshold` (>=) and is not matched yet, a false
positive otherwise; a best match that is a "difficult" ground truth makes the detection count as neither.
precision = TP / (TP + FP), recall = TP / (number of non-difficult ground truths). 11-point AP = mean over
t in {0, 0.1, ..., 1} of the largest precision at recall >= t (0 when recall never reaches t). The mAP is the
mean over the classes that have at least one non-difficult ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..obb_iou import obb_iou


def average_precision_11point(recall: np.ndarray, precision: np.ndarray) -> float:
    total = 0.0
    for t in np.linspace(0, 1, 11):
        reached = precision[recall >= t - 1e-12]
        total += float(reached.max()) if reached.size else 0.0
    return total / 11


def average_precision_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC 2010+ / DOTA-v2 style: area under the precision envelope at every recall step."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def rotated_voc_map(
    detections: Sequence[dict], ground_truths: Sequence[dict], num_classes: int, iou_threshold: float = 0.5,
    use_07_metric: bool = True, class_names: Sequence[str] | None = None,
) -> dict:
    """`detections[i]`: `boxes` (n, 5), `scores` (n,), `labels` (n,) of image i; `ground_truths[i]`: `boxes`,
    `labels` and optionally `difficult` (bool, n). Returns `{"map", "ap": per class (None without ground
    truth), "num_gts": per class}`."""
    if len(detections) != len(ground_truths):
        raise ValueError(f"Got detections for {len(detections)} images but ground truths for {len(ground_truths)}.")
    as_t = lambda x, dtype=torch.float64: torch.as_tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    aps, num_gts = [], []
    for c in range(num_classes):
        records, n_pos, gts = [], 0, []
        for i, (det, gt) in enumerate(zip(detections, ground_truths)):
            gl = as_t(gt["labels"], torch.long).reshape(-1)
            gb = as_t(gt["boxes"]).reshape(-1, 5)[gl == c]
            hard = as_t(gt.get("difficult", np.zeros(len(gl), bool)), torch.bool).reshape(-1)[gl == c]
            gts.append((gb, hard, np.zeros(len(gb), bool)))
            n_pos += int((~hard).sum())
            dl = as_t(det["labels"], torch.long).reshape(-1)
            db = as_t(det["boxes"]).reshape(-1, 5)[dl == c]
            ds = as_t(det["scores"]).reshape(-1)[dl == c]
            ious = obb_iou(db, gb) if len(gb) and len(db) else torch.zeros(len(db), len(gb), dtype=torch.float64)
            records += [(float(ds[k]), i, ious[k]) for k in range(len(db))]
        num_gts.append(n_pos)
        records.sort(key=lambda r: -r[0])
        tp, fp = [], []
        for _, i, iou_row in records:
            gb, hard, used = gts[i]
            best = int(iou_row.argmax()) if iou_row.numel() else -1
            if best >= 0 and iou_row[best] >= iou_threshold:
                if hard[best]:
                    continue
                if not used[best]:
                    used[best] = True
                    tp.append(1), fp.append(0)
                    continue
            tp.append(0), fp.append(1)
        if n_pos == 0:
            aps.append(None)
            continue
        ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        recall = ctp / n_pos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
        aps.append((average_precision_11point if use_07_metric else average_precision_area)(recall, precision))
    valid = [a for a in aps if a is not None]
    result = {"map": float(np.mean(valid)) if valid else 0.0, "ap": aps, "num_gts": num_gts}
    if class_names is not None:
        result["ap_by_class"] = dict(zip(class_names, aps))
    return result
