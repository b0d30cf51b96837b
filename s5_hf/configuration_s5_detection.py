"""Configuration of S5 oriented object detection (Oriented R-CNN heads on the S5 backbone, as in the paper's detection experiments)."""

from __future__ import annotations

from typing import Any

from .configuration_s5 import S5Config

# Class lists of the two detection benchmarks (the task names route experts and head stacks).
DIOR_R_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam",
    "expressway-service-area", "expressway-toll-station", "golffield", "groundtrackfield", "harbor", "overpass",
    "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)
DOTA_V2_CLASSES = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter", "container-crane", "airport", "helipad",
)
DETECTION_CLASS_SETS = {"dior": DIOR_R_CLASSES, "dota": DOTA_V2_CLASSES}


def _detection_task(task: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(task, str) and task.lower() in DETECTION_CLASS_SETS:
        return {"name": task.lower(), "id2label": dict(enumerate(DETECTION_CLASS_SETS[task.lower()])), "ignore_index": 255}
    return task


class S5DetectionConfig(S5Config):
    r"""
    S5 backbone (every `S5Config` field) plus one Oriented R-CNN head stack per task: an FPN
    with `fpn_num_levels` outputs, an oriented RPN with horizontal anchors and the midpoint-offset coder, and an
    RoI head (rotated RoIAlign of enlarged proposals, shared FCs, class-agnostic oriented deltas).

    Tasks are `"dior"` (DIOR-R, 20 classes), `"dota"` (DOTA-v2, 18 classes) or dicts with `name` and `id2label`.

    Args:
        fpn_channels (`int`, defaults to 256), fpn_num_levels (`int`, defaults to 5): FPN width and outputs (the
            four neck maps plus max-pooled extra levels).
        anchor_scales (`list[float]`, defaults to `[8]`), anchor_ratios (`list[float]`, defaults to `[0.5, 1, 2]`),
            anchor_strides (`list[int]`, defaults to `[4, 8, 16, 32, 64]`): RPN anchors.
        rpn_pos_iou (0.7), rpn_neg_iou (0.3), rpn_min_pos_iou (0.3), rpn_num_samples (256), rpn_pos_fraction (0.5),
            rpn_smooth_l1_beta (1/9): RPN training targets and loss; anchors crossing the image border are ignored.
        rpn_pre_nms (2000), rpn_nms_iou (0.8), rpn_max_proposals (2000): proposals (per level top `rpn_pre_nms`,
            NMS of their horizontal hulls, at most `rpn_max_proposals` per image).
        roi_output_size (7), roi_sampling_ratio (2), roi_enlarge (`[1.4, 1.2]`): rotated RoIAlign.
        roi_fc_dim (1024): the two shared FCs.
        roi_pos_iou (0.5), roi_num_samples (512), roi_pos_fraction (0.25), roi_smooth_l1_beta (1.0): RoI targets.
        test_score_threshold (0.05), test_nms_iou (0.1), test_max_detections (2000): inference.
    """

    model_type = "s5_detection"

    image_size: int = 1024
    fpn_channels: int = 256
    fpn_num_levels: int = 5
    anchor_scales: list[float] | tuple[float, ...] = (8.0,)
    anchor_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_strides: list[int] | tuple[int, ...] = (4, 8, 16, 32, 64)
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_num_samples: int = 256
    rpn_pos_fraction: float = 0.5
    rpn_smooth_l1_beta: float = 1.0 / 9.0
    rpn_pre_nms: int = 2000
    rpn_nms_iou: float = 0.8
    rpn_max_proposals: int = 2000
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    roi_enlarge: list[float] | tuple[float, ...] = (1.4, 1.2)
    roi_fc_dim: int = 1024
    roi_pos_iou: float = 0.5
    roi_num_samples: int = 512
    roi_pos_fraction: float = 0.25
    roi_smooth_l1_beta: float = 1.0
    test_score_threshold: float = 0.05
    test_nms_iou: float = 0.1
    test_max_detections: int = 2000

    def __post_init__(self, **kwargs):
        self.tasks = [_detection_task(t) for t in (self.tasks or ["dior", "dota"])]
        for name in ("anchor_scales", "anchor_ratios", "anchor_strides", "roi_enlarge"):
            setattr(self, name, list(getattr(self, name)))
        super().__post_init__(**kwargs)
        if len(self.anchor_strides) != self.fpn_num_levels:
            raise ValueError(
                f"anchor_strides {self.anchor_strides} must have one stride per FPN level (fpn_num_levels="
                f"{self.fpn_num_levels})."
            )
        if self.fpn_num_levels < 4:
            raise ValueError(f"fpn_num_levels must be at least 4 (the neck's maps), got {self.fpn_num_levels}.")
        if len(self.roi_enlarge) != 2:
            raise ValueError(f"roi_enlarge must be (width factor, height factor), got {self.roi_enlarge}.")

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)


__all__ = ["S5DetectionConfig", "DIOR_R_CLASSES", "DOTA_V2_CLASSES", "DETECTION_CLASS_SETS"]
