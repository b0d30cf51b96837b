"""`evaluate` wrapper of `s5_hf.detection.metric.rotated_voc_map`: oriented-box mAP of DIOR-R / DOTA.

Load it by path (no network): `evaluate.load("<path to s5_hf>/evaluate_metric/s5_rotated_map.py")`.
"""

import datasets
import evaluate
import numpy as np

from s5_hf.detection.metric import rotated_voc_map

_DESCRIPTION = """
Mean average precision of oriented boxes: PASCAL VOC 2007 11-point AP per class (or the area under the
precision envelope with `use_07_metric=False`), a detection matching a ground truth of its class when their rotated
IoU reaches `iou_threshold` (0.5); difficult ground truths neither count nor penalise. The mean runs over the
classes that have ground truth. This is the DIOR-R protocol of the S5 paper.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per image: `boxes` (n x 5: cx, cy, w, h, angle in radians), `scores` (n), `labels` (n).
    references: one dict per image: `boxes` (m x 5), `labels` (m), `difficult` (m booleans).
    num_labels: number of classes.
    iou_threshold: default 0.5. use_07_metric: default True.
Returns:
    map (float) and ap (per class; NaN for classes without ground truth), num_gts (per class).
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
class S5RotatedMeanAveragePrecision(evaluate.Metric):
    def _info(self):
        boxes = datasets.List(datasets.List(datasets.Value("float64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"boxes": boxes, "scores": datasets.List(datasets.Value("float64")),
                                "labels": datasets.List(datasets.Value("int64"))},
                "references": {"boxes": boxes, "labels": datasets.List(datasets.Value("int64")),
                               "difficult": datasets.List(datasets.Value("bool"))},
            }),
        )

    def _compute(self, predictions, references, num_labels: int, iou_threshold: float = 0.5, use_07_metric: bool = True):
        result = rotated_voc_map(predictions, references, num_labels, iou_threshold, use_07_metric)
        return {"map": result["map"], "ap": [np.nan if a is None else a for a in result["ap"]], "num_gts": result["num_gts"]}
