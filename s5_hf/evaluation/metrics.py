"""Segmentation metrics from a confusion matrix: IoU, F1, precision, recall and accuracy per class and their means.

`ConfusionMatrix` accumulates a (K, K) int64 matrix (rows: target class, columns: predicted class) on any device,
sums it across processes (`reduce`), and turns it into `SegmentationScores` (`compute`). Pixels whose target is
the task's ignore index or the universal void id 255 are left out entirely.

The official S5 evaluation does not leave them all out: with ISPRS's ignore index 5 equal to the class count, its
histogram puts every clutter pixel into the last bin, i.e. counts it as a correctly predicted "car" pixel.
`official_scores` reproduces that computation (and its plain, NaN-free means) from the same accumulated counts, so
one evaluation pass reports both our numbers and the paper-comparable ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..label_sets import VOID_ID, get_label_set
from ..visualize import heat_map, save_png

# The local `evaluate` module that wraps this file (see `load_evaluate_metric`).
EVALUATE_METRIC_SCRIPT = Path(__file__).parent / "evaluate_metric" / "s5_miou.py"


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one evaluation. Values are fractions in [0, 1] (multiply by 100 for the usual percentages).

    Per-class arrays (length K) are NaN where their denominator is zero: `iou` and `f1` for a class that is
    neither in the targets nor in the predictions, `recall`/`accuracy` for a class absent from the targets,
    `precision` for a class never predicted. The means skip NaN classes (mmseg's convention), so a class missing
    from a validation set does not pull the mean down; they are NaN only if every class is NaN.
    """

    class_names: tuple[str, ...]
    iou: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    # Recall is what mmseg calls the per-class accuracy; `accuracy` is the same array under that name.
    recall: np.ndarray
    mean_iou: float
    mean_f1: float
    mean_accuracy: float
    overall_accuracy: float
    # Pixels that were scored (all classes, ignored pixels excluded).
    num_pixels: int

    @property
    def accuracy(self) -> np.ndarray:
        return self.recall

    def to_dict(self) -> dict[str, Any]:
        """Means as floats and per-class arrays, with the key names of the Hub's `mean_iou` metric plus F1."""
        return {
            "mean_iou": self.mean_iou,
            "mean_f1": self.mean_f1,
            "mean_accuracy": self.mean_accuracy,
            "overall_accuracy": self.overall_accuracy,
            "per_category_iou": self.iou,
            "per_category_f1": self.f1,
            "per_category_precision": self.precision,
            "per_category_recall": self.recall,
            "per_category_accuracy": self.recall,
        }

    def format_table(self, digits: int = 2) -> str:
        """A markdown table of the per-class scores (percent) followed by the means and overall accuracy."""

        def cell(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{100 * value:.{digits}f}"

        lines = ["| class | IoU | F1 | precision | recall |", "|---|---:|---:|---:|---:|"]
        for k, name in enumerate(self.class_names):
            values = (self.iou[k], self.f1[k], self.precision[k], self.recall[k])
            lines.append(f"| {name} | " + " | ".join(cell(v) for v in values) + " |")
        lines.append(f"| **mean** | {cell(self.mean_iou)} | {cell(self.mean_f1)} | | {cell(self.mean_accuracy)} |")
        lines.append("")
        lines.append(f"Overall accuracy: {cell(self.overall_accuracy)} ({self.num_pixels} pixels).")
        return "\n".join(lines)


class ConfusionMatrix:
    """Accumulates a (num_classes, num_classes) int64 confusion matrix; rows are targets, columns predictions.

    Args:
        num_classes: K; predictions and non-ignored targets must be in `[0, K)`.
        ignore_index: the task's ignore id (ISPRS clutter is 5, every other S5 dataset uses 255).
        extra_ignore: more ids left out of the scores; the void id 255 by default, so padding is never scored.
        class_names: names for tables and plots (default `class_0`, ...).
        device: where the matrix lives; inputs are moved there. Use the evaluation device (e.g.
            `accelerator.device`) so the update stays on the GPU and `reduce` works with NCCL.

    Besides the matrix it keeps the two counts the official computation needs (`official_scores`): the number
    of pixels whose target is `ignore_index`, and the predictions at pixels whose target is one of the other
    ignored ids.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = VOID_ID,
        extra_ignore: Sequence[int] = (VOID_ID,),
        class_names: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"Got {len(class_names)} class names for {num_classes} classes.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ignored_ids = tuple(dict.fromkeys(([] if ignore_index is None else [ignore_index]) + list(extra_ignore)))
        inside = [i for i in self.ignored_ids if 0 <= i < num_classes]
        if inside:
            raise ValueError(f"Ignored ids {inside} are real classes of a {num_classes}-class task.")
        default_names = tuple(f"class_{k}" for k in range(num_classes))
        self.class_names = tuple(class_names) if class_names is not None else default_names
        self.device = torch.device(device)
        self.reset()

    @classmethod
    def for_task(cls, name: str, device: torch.device | str = "cpu") -> ConfusionMatrix:
        """The matrix of a known dataset (`s5_hf.label_sets`): its classes, names and ignore index."""
        label_set = get_label_set(name)
        return cls(label_set.num_classes, label_set.ignore_index, class_names=label_set.class_names, device=device)

    def reset(self) -> None:
        k = self.num_classes
        self.matrix = torch.zeros(k, k, dtype=torch.int64, device=self.device)
        self.void_predictions = torch.zeros(k, dtype=torch.int64, device=self.device)
        self.ignore_index_pixels = torch.zeros((), dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of class-id predictions and targets of the same shape (any shape, e.g. (B, H, W)).

        Predictions must be class ids (argmax of the logits), not logits.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"Predictions have shape {tuple(pred.shape)} but targets {tuple(target.shape)}.")
        for name, tensor in (("Predictions", pred), ("Targets", target)):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise TypeError(
                    f"{name} must be integer class ids, got dtype {tensor.dtype} (take the argmax of the logits)."
                )
        k = self.num_classes
        pred = pred.to(self.device, torch.int64).reshape(-1)
        target = target.to(self.device, torch.int64).reshape(-1)

        bad_pred = (pred < 0) | (pred >= k)
        if bad_pred.any():
            values = torch.unique(pred[bad_pred]).tolist()[:10]
            raise ValueError(f"Predicted ids {values} are outside the {k} classes 0..{k - 1}.")
        ignored = torch.zeros_like(target, dtype=torch.bool)
        for ignored_id in self.ignored_ids:
            ignored |= target == ignored_id
        bad_target = ~ignored & ((target < 0) | (target >= k))
        if bad_target.any():
            values = torch.unique(target[bad_target]).tolist()[:10]
            raise ValueError(
                f"Target ids {values} are outside the {k} classes 0..{k - 1} and not ignored "
                f"(ignored ids: {list(self.ignored_ids)})."
            )

        valid = ~ignored
        self.matrix += torch.bincount(target[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
        if self.ignore_index is not None:
            at_ignore_index = target == self.ignore_index
            self.ignore_index_pixels += at_ignore_index.sum()
            void = ignored & ~at_ignore_index
        else:
            void = ignored
        self.void_predictions += torch.bincount(pred[void], minlength=k)

    def reduce(self, accelerator: Any = None) -> ConfusionMatrix:
        """A new matrix holding the sum over all processes (this one is left unchanged).

        With an `accelerate.Accelerator` its `reduce` is used; otherwise `torch.distributed.all_reduce` when a
        process group is initialised; in a single process the result is a copy. Every process must call it.
        The sum equals a single-process evaluation only if each sample is scored by exactly one process: a
        `DistributedSampler` pads the last batch with repeated samples, which would then be counted twice.
        """
        k = self.num_classes
        buffer = torch.cat([self.matrix.reshape(-1), self.void_predictions, self.ignore_index_pixels.reshape(1)])
        if accelerator is not None:
            buffer = accelerator.reduce(buffer, reduction="sum")
        elif dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            buffer = buffer.clone()
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        reduced = ConfusionMatrix(k, self.ignore_index, self.ignored_ids, self.class_names, self.device)
        reduced.matrix = buffer[: k * k].reshape(k, k).clone()
        reduced.void_predictions = buffer[k * k : k * k + k].clone()
        reduced.ignore_index_pixels = buffer[-1].clone()
        return reduced

    def compute(self, exclude_from_mean: Sequence[int] = ()) -> SegmentationScores:
        """Scores from the accumulated counts. `exclude_from_mean` drops classes from the three class means only:
        `(0,)` mirrors the official S4P validation, whose means skip iSAID's background (its overall accuracy
        does too; ours always covers every scored pixel)."""
        matrix = self.matrix.cpu().double().numpy()
        tp = np.diag(matrix)
        target_count = matrix.sum(axis=1)
        pred_count = matrix.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (target_count + pred_count - tp)
            f1 = 2 * tp / (target_count + pred_count)
            precision = tp / pred_count
            recall = tp / target_count
            total = matrix.sum()
            overall = float(tp.sum() / total) if total > 0 else math.nan
        keep = np.ones(self.num_classes, dtype=bool)
        for k in exclude_from_mean:
            if not 0 <= k < self.num_classes:
                raise ValueError(f"Cannot exclude class {k} from the means of a {self.num_classes}-class task.")
            keep[k] = False
        return SegmentationScores(
            class_names=self.class_names,
            iou=iou,
            f1=f1,
            precision=precision,
            recall=recall,
            mean_iou=_nanmean(iou[keep]),
            mean_f1=_nanmean(f1[keep]),
            mean_accuracy=_nanmean(recall[keep]),
            overall_accuracy=overall,
            num_pixels=int(total),
        )


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def official_scores(confusion: ConfusionMatrix) -> SegmentationScores:
    """The scores the official S5 `evaluate.py` reports for the same predictions, ISPRS bug included.

    The official code overwrites the prediction with the ignore index wherever the target is the ignore index
    and histograms predictions, targets and matches into the bins `0, 1, ..., K`. NumPy's last bin is closed,
    so when the ignore index equals the class count K (ISPRS: clutter = 5 = K) every ignored pixel lands in
    class K-1 as a match: car gains that many true positives, inflating car IoU/F1, the means and overall
    accuracy. Pixels with another ignored target (void 255) keep their prediction, which then counts towards
    the predicted area of its class. Scores are `a / (b + 1e-10)` and the means are plain means, so absent
    classes count as 0 instead of being skipped. `precision`/`recall` are the official precise/accuracy arrays.
    """
    k = confusion.num_classes
    matrix = confusion.matrix.cpu().double().numpy()
    intersection = np.diag(matrix).copy()
    target_area = matrix.sum(axis=1)
    pred_area = matrix.sum(axis=0) + confusion.void_predictions.cpu().double().numpy()
    if confusion.ignore_index == k:
        inflation = float(confusion.ignore_index_pixels)
        intersection[k - 1] += inflation
        target_area[k - 1] += inflation
        pred_area[k - 1] += inflation
    union = pred_area + target_area - intersection
    iou = intersection / (union + 1e-10)
    recall = intersection / (target_area + 1e-10)
    precision = intersection / (pred_area + 1e-10)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return SegmentationScores(
        class_names=confusion.class_names,
        iou=iou,
        f1=f1,
        precision=precision,
        recall=recall,
        mean_iou=float(np.mean(iou)),
        mean_f1=float(np.mean(f1)),
        mean_accuracy=float(np.mean(recall)),
        overall_accuracy=float(intersection.sum() / (target_area.sum() + 1e-10)),
        num_pixels=int(target_area.sum()),
    )


def load_evaluate_metric(**kwargs: Any):
    """Load this package's `evaluate` metric (`s5_hf/evaluation/evaluate_metric/s5_miou.py`) from its local path.

    Loading by path reads no network. `kwargs` go to `evaluate.load` (e.g. `keep_in_memory=True`, `cache_dir`).
    """
    import evaluate

    return evaluate.load(str(EVALUATE_METRIC_SCRIPT), **kwargs)


def save_confusion_matrix_png(
    matrix: ConfusionMatrix | torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write a heatmap of the confusion matrix as PNG: rows are targets, columns predictions, each row normalised
    to sum to 100 % (a cell is the share of that target class predicted as the column class; the diagonal is the
    recall). Rows without pixels are grey. `class_names` defaults to the matrix's own names."""
    if isinstance(matrix, ConfusionMatrix):
        class_names = class_names if class_names is not None else matrix.class_names
        matrix = matrix.matrix
    counts = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"A confusion matrix must be square, got shape {counts.shape}.")
    k = counts.shape[0]
    class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"Got {len(class_names)} class names for a {k}x{k} matrix.")
    counts = counts.astype(np.float64)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(row_totals > 0, counts / row_totals, np.nan)

    texts = [["n/a" if math.isnan(share) else f"{100 * share:.1f}" for share in row] for row in shares]
    image = heat_map(shares, class_names, class_names, cell_text=texts, title=title, row_title="target class (rows)",
                     column_title="predicted class (columns); cells: % of the target row")
    return save_png(image, path)


__all__ = [
    "ConfusionMatrix",
    "EVALUATE_METRIC_SCRIPT",
    "SegmentationScores",
    "load_evaluate_metric",
    "official_scores",
    "save_confusion_matrix_png",
]
