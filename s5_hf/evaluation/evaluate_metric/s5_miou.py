"""`evaluate` wrapper of `s5_hf.evaluation.metrics`: mIoU, mF1, accuracies and per-class scores of semantic segmentation.

Load it by path (no network): `evaluate.load("<path to s5_hf>/evaluate_metric/s5_miou.py")`, or
`s5_hf.evaluation.metrics.load_evaluate_metric()`. The numbers are `s5_hf.evaluation.metrics.ConfusionMatrix(...).compute()`.
"""

import datasets
import evaluate
import numpy as np
import torch

from s5_hf.evaluation.metrics import ConfusionMatrix, official_scores

_DESCRIPTION = """
Semantic segmentation scores from a confusion matrix, as used by s5-hf: per-class IoU, F1, precision and recall,
their means (classes absent from both references and predictions are NaN and skipped), and overall accuracy.
Pixels whose reference is `ignore_index` or the void id 255 are not scored. With `official=True` the result
also holds the scores computed the way the official S5 evaluation does (ISPRS clutter counted as correct car
when `ignore_index == num_labels`), under keys prefixed `official_`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of 2-D integer arrays of predicted class ids (H, W), one per image.
    references: list of 2-D integer arrays of ground-truth class ids, same shapes as `predictions`.
    num_labels: number of classes K; ids outside [0, K) that are not ignored raise an error.
    ignore_index: the dataset's ignore id (255, or 5 for ISPRS Vaihingen/Potsdam); 255 is always ignored.
    official: also return the official S5 scores (`official_mean_iou`, ...). Default False.
Returns:
    mean_iou, mean_f1, mean_accuracy, overall_accuracy (floats in [0, 1]) and per_category_iou,
    per_category_f1, per_category_precision, per_category_recall, per_category_accuracy (arrays of length K).
Example:
    >>> metric = evaluate.load("s5_hf/evaluation/evaluate_metric/s5_miou.py")
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2)["mean_iou"]
    0.5
"""

_CITATION = """
@inproceedings{s5,
  title={S5: Scalable Semi-Supervised Semantic Segmentation in Remote Sensing},
  booktitle={AAAI},
  year={2026},
  note={arXiv:2508.12409}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class S5MeanIoU(evaluate.Metric):
    def _info(self):
        id_map = datasets.List(datasets.List(datasets.Value("int64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": id_map, "references": id_map}),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: int = 255, official: bool = False):
        confusion = ConfusionMatrix(num_labels, ignore_index)
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            prediction, reference = np.asarray(prediction), np.asarray(reference)
            if prediction.ndim != 2:
                raise ValueError(f"Prediction {index} must be a 2-D id map, got shape {prediction.shape}.")
            confusion.update(torch.from_numpy(prediction), torch.from_numpy(reference))
        result = confusion.compute().to_dict()
        if official:
            result.update({f"official_{key}": value for key, value in official_scores(confusion).to_dict().items()})
        return result
