"""DIOR-R reader: 800 x 800 optical images, oriented boxes in VOC-style XML.

Layout (as distributed): `JPEGImages-trainval/<id>.jpg`, `JPEGImages-test/<id>.jpg` (a single `JPEGImages/`
folder works too), `Annotations/Oriented Bounding Boxes/<id>.xml` (or `Annotations/<id>.xml`) and
`ImageSets/Main/{trainval,test}.txt`. An object's box is its `robndbox` with four corner points
(`x_left_top`, `y_left_top`, `x_right_top`, ..., `y_left_bottom`), or with `cx`, `cy`, `w`, `h`, `angle`
(radians, this package's convention), or a `polygon` with `x1..y4`; corners become the minimum-area rectangle.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..configuration_s5_detection import DIOR_R_CLASSES
from ..data.images import DataFileError, read_rgb
from ..obb_geometry import polygon_to_obb, regularize_obb

_CORNER_TAGS = ("x_left_top", "y_left_top", "x_right_top", "y_right_top",
                "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")
_SPLITS = ("trainval", "test")


def _number(node: ET.Element, tag: str, path: Path) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DataFileError(path, f"an object box has no <{tag}>")
    try:
        return float(child.text)
    except ValueError:
        raise DataFileError(path, f"<{tag}> is not a number: {child.text!r}") from None


def parse_dior_r_xml(path: str | Path, classes: Sequence[str] = DIOR_R_CLASSES) -> dict:
    """One annotation file -> `{"boxes": (n, 5) float32, "labels": (n,) int64, "difficult": (n,) bool}`."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise DataFileError(path, f"cannot parse the XML ({error})") from None
    index = {name.lower(): i for i, name in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name.lower() not in index:
            raise DataFileError(path, f"unknown class {name!r}; known classes: {', '.join(classes)}")
        rob = obj.find("robndbox")
        poly = obj.find("polygon")
        if rob is not None and rob.find("x_left_top") is not None:
            v = [_number(rob, t, path) for t in _CORNER_TAGS]
            box = polygon_to_obb(torch.tensor(v, dtype=torch.float64).reshape(1, 4, 2))[0]
        elif rob is not None and rob.find("cx") is not None:
            box = regularize_obb(torch.tensor([[_number(rob, t, path) for t in ("cx", "cy", "w", "h", "angle")]],
                                              dtype=torch.float64))[0]
        elif poly is not None:
            v = [_number(poly, f"{a}{i}", path) for i in range(1, 5) for a in ("x", "y")]
            box = polygon_to_obb(torch.tensor(v, dtype=torch.float64).reshape(1, 4, 2))[0]
        else:
            raise DataFileError(path, f"object {name!r} has neither <robndbox> nor <polygon>")
        boxes.append(box.tolist())
        labels.append(index[name.lower()])
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 5), "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult, bool)}


def _image_path(root: Path, split: str, image_id: str) -> Path:
    for folder in (f"JPEGImages-{split}", "JPEGImages-trainval", "JPEGImages-test", "JPEGImages"):
        for ext in (".jpg", ".png", ".tif"):
            candidate = root / folder / f"{image_id}{ext}"
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"DIOR-R image {image_id!r} not found under {root} (looked in JPEGImages-{split}/ and JPEGImages/).")


def _annotation_path(root: Path, image_id: str) -> Path:
    for folder in (root / "Annotations" / "Oriented Bounding Boxes", root / "Annotations"):
        if (folder / f"{image_id}.xml").exists():
            return folder / f"{image_id}.xml"
    raise FileNotFoundError(f"DIOR-R annotation {image_id}.xml not found under {root / 'Annotations'}.")


def read_dior_r(root: str | Path, split: str = "trainval", classes: Sequence[str] = DIOR_R_CLASSES) -> Iterator[dict]:
    """Yield `{"id", "image" (H, W, 3) uint8, "boxes", "labels", "difficult"}` for every image of the split."""
    root = Path(root)
    if split not in _SPLITS:
        raise ValueError(f"DIOR-R split must be one of {_SPLITS}, got {split!r}.")
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.exists():
        raise FileNotFoundError(f"DIOR-R split list {listing} not found (expected the ImageSets/Main/{split}.txt of the release).")
    for image_id in [line.strip() for line in listing.read_text().splitlines() if line.strip()]:
        pixels, _ = read_rgb(_image_path(root, split, image_id))
        yield {"id": image_id, "image": pixels, **parse_dior_r_xml(_annotation_path(root, image_id), classes)}
