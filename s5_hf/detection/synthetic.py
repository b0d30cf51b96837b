"""Tiny synthetic look-alikes of the DIOR-R and DOTA-v2 layouts for tests and demos.

Scenes are dark noisy backgrounds with a few non-overlapping bright rotated rectangles; the class sets the
colour (class k of K has a distinct hue), so a small detector can learn them. Annotations are written in the
real formats (DIOR-R: VOC XML with `robndbox` corner points + ImageSets; DOTA: `labelTxt` polygons).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..configuration_s5_detection import DIOR_R_CLASSES, DOTA_V2_CLASSES
from ..files import write_text
from ..obb_geometry import obb_to_corners, regularize_obb
from ..obb_iou import obb_iou

_PALETTE = ((255, 70, 60), (60, 230, 80), (80, 120, 255), (250, 230, 60), (230, 80, 230), (60, 230, 230))


def synthetic_scene(
    rng: np.random.Generator, height: int, width: int, num_classes: int, max_objects: int = 3,
    size_range: tuple[float, float] = (14.0, 34.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: `(pixels (H, W, 3) uint8, boxes (n, 5) float32, labels (n,) int64)`, n >= 1."""
    pixels = rng.normal(40, 12, (height, width, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(50):  # attempts
        if len(boxes) >= rng.integers(1, max_objects + 1):
            break
        w = rng.uniform(*size_range)
        h = w / rng.uniform(1.5, 3.0)
        margin = w / 2 + 1
        if width <= 2 * margin or height <= 2 * margin:
            continue
        box = torch.tensor([[rng.uniform(margin, width - margin), rng.uniform(margin, height - margin), w, h,
                             rng.uniform(-math.pi / 2, math.pi / 2)]], dtype=torch.float64)
        if boxes and obb_iou(box, torch.tensor(boxes, dtype=torch.float64)).max() > 0:
            continue
        label = int(rng.integers(num_classes))
        color = _PALETTE[label % len(_PALETTE)]
        draw.polygon([tuple(p) for p in obb_to_corners(box[0]).tolist()], fill=color)
        boxes.append(regularize_obb(box)[0].tolist())
        labels.append(label)
    return np.asarray(image), np.asarray(boxes, np.float32).reshape(-1, 5), np.asarray(labels, np.int64)


def make_fake_dior_r(
    root: str | Path, num_trainval: int = 8, num_test: int = 4, size: int = 96,
    classes: Sequence[str] = DIOR_R_CLASSES[:3], seed: int = 0, max_objects: int = 3,
) -> Path:
    """Write `JPEGImages-{trainval,test}/`, `Annotations/Oriented Bounding Boxes/*.xml`, `ImageSets/Main/*.txt`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    annotations = root / "Annotations" / "Oriented Bounding Boxes"
    annotations.mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    number = 0
    for split, count in (("trainval", num_trainval), ("test", num_test)):
        folder = root / f"JPEGImages-{split}"
        folder.mkdir(parents=True, exist_ok=True)
        ids = []
        for _ in range(count):
            number += 1
            image_id = f"{number:05d}"
            pixels, boxes, labels = synthetic_scene(rng, size, size, len(classes), max_objects)
            Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=95)
            objects = []
            for box, label in zip(boxes, labels):
                c = obb_to_corners(torch.tensor(box, dtype=torch.float64)).tolist()
                tags = ("left_top", "right_top", "right_bottom", "left_bottom")
                coords = "".join(f"<x_{t}>{p[0]:.2f}</x_{t}><y_{t}>{p[1]:.2f}</y_{t}>" for t, p in zip(tags, c))
                objects.append(f"<object><name>{classes[label]}</name><difficult>0</difficult>"
                               f"<robndbox>{coords}</robndbox></object>")
            write_text(annotations / f"{image_id}.xml",
                       f"<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width>"
                       f"<height>{size}</height><depth>3</depth></size>{''.join(objects)}</annotation>\n")
            ids.append(image_id)
        write_text(root / "ImageSets" / "Main" / f"{split}.txt", "".join(i + "\n" for i in ids))
    return root


def make_fake_dota(
    root: str | Path, num_train: int = 2, num_val: int = 1, size: int = 160, classes: Sequence[str] = DOTA_V2_CLASSES[:3],
    seed: int = 1, max_objects: int = 6,
) -> Path:
    """Write `{train,val}/images/*.png` and `{train,val}/labelTxt/*.txt` (DOTA-v2 format, large-ish scenes with
    empty margins, so patching drops some patches)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    number = 0
    for split, count in (("train", num_train), ("val", num_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labelTxt").mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            number += 1
            image_id = f"P{number:04d}"
            # objects only in the top-left part of the scene, so some patches of the rest are empty
            pixels = rng.normal(40, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
            part, boxes, labels = synthetic_scene(rng, size // 2, size // 2, len(classes), max_objects)
            pixels[: size // 2, : size // 2] = part
            Image.fromarray(pixels).save(root / split / "images" / f"{image_id}.png")
            lines = ["imagesource:synthetic", "gsd:1.0"]
            for box, label in zip(boxes, labels):
                c = obb_to_corners(torch.tensor(box, dtype=torch.float64)).reshape(-1).tolist()
                lines.append(" ".join(f"{v:.1f}" for v in c) + f" {classes[label]} 0")
            write_text(root / split / "labelTxt" / f"{image_id}.txt", "\n".join(lines) + "\n")
    return root
