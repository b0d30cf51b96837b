"""DOTA-v2: label files, 1024-px patches with 200 px overlap, patch-result merging, server output.

Layout: `<split>/images/<id>.png` and `<split>/labelTxt/<id>.txt` with lines `x1 y1 x2 y2 x3 y3 x4 y4 class
difficult` (leading `imagesource:`/`gsd:` lines are skipped). Patching: windows every `patch_size - overlap`
px, the last one shifted back inside the image (`s5_hf.data.patches`); an object goes to a patch when at least
`iof_threshold` (0.7) of its area lies inside it, with its full box shifted into patch coordinates; objects of
at most 2 px width or height are ignored; patches without objects are dropped when `drop_empty`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..configuration_s5_detection import DOTA_V2_CLASSES
from ..data.images import DataFileError, read_rgb
from ..data.patches import cut_patch, window_starts
from ..obb_geometry import obb_to_corners, polygon_to_obb
from ..obb_iou import _intersection_area
from ..obb_nms import batched_obb_nms


def parse_dota_labels(path: str | Path, classes: Sequence[str] = DOTA_V2_CLASSES) -> dict:
    path = Path(path)
    index = {name: i for i, name in enumerate(classes)}
    polys, labels, difficult = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or line.startswith(("imagesource", "gsd")):
            continue
        if len(parts) < 9:
            raise DataFileError(path, f"line {number} has {len(parts)} fields, expected 8 coordinates, a class and 'difficult'")
        try:
            coords = [float(v) for v in parts[:8]]
        except ValueError:
            raise DataFileError(path, f"line {number}: coordinates are not numbers: {parts[:8]}") from None
        if parts[8] not in index:
            raise DataFileError(path, f"line {number}: unknown class {parts[8]!r}; known classes: {', '.join(classes)}")
        polys.append(coords)
        labels.append(index[parts[8]])
        difficult.append(len(parts) > 9 and parts[9] == "1")
    boxes = polygon_to_obb(torch.tensor(polys, dtype=torch.float64).reshape(-1, 4, 2)).numpy()
    return {"boxes": boxes.astype(np.float32).reshape(-1, 5), "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult, bool)}


def split_dota_image(
    pixels: np.ndarray, annotations: dict | None, patch_size: int = 1024, overlap: int = 200,
    iof_threshold: float = 0.7, drop_empty: bool = True, min_size: float = 2.0,
) -> Iterator[dict]:
    """Cut one image into patches: `{"offset": (left, top), "image", "boxes", "labels", "difficult"}`."""
    height, width = pixels.shape[:2]
    stride = patch_size - overlap
    if stride <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than patch_size ({patch_size}).")
    if annotations is not None:
        boxes = torch.as_tensor(annotations["boxes"], dtype=torch.float64).reshape(-1, 5)
        keep = (boxes[:, 2] > min_size) & (boxes[:, 3] > min_size)
        boxes = boxes[keep]
        labels = np.asarray(annotations["labels"])[keep.numpy()]
        difficult = np.asarray(annotations.get("difficult", np.zeros(len(keep), bool)))[keep.numpy()]
        areas = (boxes[:, 2] * boxes[:, 3]).clamp(min=1e-9)
    for top in window_starts(height, patch_size, stride):
        for left in window_starts(width, patch_size, stride):
            patch = {"offset": (left, top), "image": cut_patch(pixels, top, left, patch_size, 0)}
            if annotations is not None:
                window = torch.tensor([[left + patch_size / 2, top + patch_size / 2, patch_size, patch_size, 0.0]],
                                      dtype=torch.float64).expand(len(boxes), 5)
                iof = _intersection_area(boxes, window) / areas if len(boxes) else areas
                inside = (iof >= iof_threshold).numpy()
                shifted = boxes[inside].clone()
                shifted[:, 0] -= left
                shifted[:, 1] -= top
                if drop_empty and not inside.any():
                    continue
                patch.update(boxes=shifted.float().numpy(), labels=labels[inside], difficult=difficult[inside])
            yield patch


def read_dota(
    root: str | Path, split: str = "train", classes: Sequence[str] = DOTA_V2_CLASSES, patch_size: int = 1024,
    overlap: int = 200, drop_empty: bool | None = None,
) -> Iterator[dict]:
    """Patches of every image of `root/split`: `{"id", "image_id", "offset", "image", ...annotations}`.

    Empty patches are dropped in training (`split == "train"`, default of `drop_empty`); splits without
    `labelTxt/` (the test set) yield image patches only.
    """
    root = Path(root) / split
    images = root / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"DOTA images folder {images} not found (expected <root>/{split}/images/).")
    labels_dir = root / "labelTxt"
    drop_empty = split == "train" if drop_empty is None else drop_empty
    for image_path in sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif")):
        annotations = None
        if labels_dir.is_dir():
            label_path = labels_dir / f"{image_path.stem}.txt"
            if not label_path.exists():
                raise FileNotFoundError(f"DOTA label file {label_path} for image {image_path.name} not found.")
            annotations = parse_dota_labels(label_path, classes)
        pixels, _ = read_rgb(image_path)
        for patch in split_dota_image(pixels, annotations, patch_size, overlap, drop_empty=drop_empty):
            left, top = patch["offset"]
            yield {"id": f"{image_path.stem}__{left}__{top}", "image_id": image_path.stem, **patch}


def merge_patch_detections(patches: Sequence[dict], iou_threshold: float = 0.1) -> dict[str, dict]:
    """Patch detections `{"image_id", "offset": (left, top), "boxes", "scores", "labels"}` -> full-image
    detections per image id: boxes shifted back by the offset, then rotated NMS per class across patches."""
    grouped: dict[str, list[dict]] = {}
    for p in patches:
        grouped.setdefault(p["image_id"], []).append(p)
    merged = {}
    for image_id, items in grouped.items():
        boxes, scores, labels = [], [], []
        for p in items:
            b = torch.as_tensor(np.asarray(p["boxes"]), dtype=torch.float64).reshape(-1, 5).clone()
            b[:, 0] += p["offset"][0]
            b[:, 1] += p["offset"][1]
            boxes.append(b)
            scores.append(torch.as_tensor(np.asarray(p["scores"]), dtype=torch.float64).reshape(-1))
            labels.append(torch.as_tensor(np.asarray(p["labels"]), dtype=torch.long).reshape(-1))
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_obb_nms(boxes, scores, labels, iou_threshold)
        merged[image_id] = {"boxes": boxes[keep].numpy(), "scores": scores[keep].numpy(), "labels": labels[keep].numpy()}
    return merged


def write_dota_submission(merged: dict[str, dict], out_dir: str | Path, classes: Sequence[str] = DOTA_V2_CLASSES) -> list[Path]:
    """The evaluation server's Task 1 format: one `Task1_<class>.txt` per class with lines
    `<image id> <score> x1 y1 x2 y2 x3 y3 x4 y4`."""
    from ..files import write_text

    lines: dict[int, list[str]] = {c: [] for c in range(len(classes))}
    for image_id in sorted(merged):
        det = merged[image_id]
        corners = obb_to_corners(torch.as_tensor(np.asarray(det["boxes"]), dtype=torch.float64).reshape(-1, 5))
        for corner, score, label in zip(corners.reshape(-1, 8).tolist(), np.asarray(det["scores"]), np.asarray(det["labels"])):
            lines[int(label)].append(f"{image_id} {float(score):.6f} " + " ".join(f"{v:.1f}" for v in corner))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c, name in enumerate(classes):
        path = out_dir / f"Task1_{name}.txt"
        write_text(path, "".join(line + "\n" for line in lines[c]))
        written.append(path)
    return written
