"""Oriented object detection data and evaluation: DIOR-R and DOTA-v2 readers, synthetic look-alikes, the VOC07
rotated mAP, DOTA patch merging and server output, detection datasets for Parquet shards, large-scene detection
(`s5_hf.detection.scene`). The model is `s5_hf.modeling_s5_detection.S5ForOrientedDetection`."""

from .dior import read_dior_r
from .dota import merge_patch_detections, read_dota, split_dota_image, write_dota_submission
from .metric import rotated_voc_map
from .shards import detection_dataset, rows_from_dataset
from .synthetic import make_fake_dior_r, make_fake_dota

__all__ = [
    "detection_dataset",
    "rows_from_dataset",
    "make_fake_dior_r",
    "make_fake_dota",
    "merge_patch_detections",
    "read_dior_r",
    "read_dota",
    "rotated_voc_map",
    "split_dota_image",
    "write_dota_submission",
]
