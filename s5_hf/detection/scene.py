"""Large-scene oriented detection: tiles with overlap, patch detections merged with rotated NMS, GeoJSON or
GeoPackage output.

    python -m s5_hf.detection.scene scene.tif boxes.geojson --model path/or/hub-id --task dior

Tiles of `tile` px start every `tile - overlap` px (the last one moved back inside the scene, as the DOTA
patches); a scene smaller than a tile is padded with zeros. Each tile is normalised with ImageNet statistics on
the 0-255 scale (8-bit RGB only: other data types or band counts are refused, not rescaled silently), detected,
shifted back to scene pixels and merged per class with rotated NMS (IoU 0.1 by default, as the per-image test
NMS). The GeoJSON holds one polygon (the 4 corners, closed) per detection with `label`, `class` and `score`; for a
georeferenced scene (GeoTIFF read with rasterio) the corners go through the scene's affine transform and the file
names the scene's CRS (`crs` member, EPSG code when there is one, as GDAL reads it); otherwise coordinates are
pixels (x right, y down). An output named `*.gpkg` is a GeoPackage instead
(`s5_hf.detection.geopackage`: one polygon layer `detections` with the same fields, srs_id = the EPSG code).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..cli import ArgumentParser
from ..data.patches import window_starts
from ..files import write_text
from ..inference.scenes import open_scene
from ..obb_geometry import obb_to_corners
from .dota import merge_patch_detections
from .geopackage import write_geopackage

MEAN = np.array([123.675, 116.28, 103.53], np.float32)[:, None, None]
STD = np.array([58.395, 57.12, 57.375], np.float32)[:, None, None]


def detect_scene(model, source, task: str | None = None, tile: int = 1024, overlap: int = 200,
                 nms_iou: float = 0.1, batch_size: int = 1) -> dict[str, np.ndarray]:
    """`boxes` (n, 5) in scene pixels, `scores`, `labels` of one scene (path, array or `s5_hf.inference.Scene`)."""
    if tile % 32:
        raise ValueError(f"tile must be a multiple of 32 (the model's largest stride), got {tile}.")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}.")
    scene = open_scene(source)
    try:
        if scene.bands != 3 or np.dtype(scene.dtype) != np.uint8:
            raise ValueError(f"{scene.name}: detection expects 8-bit RGB imagery, got {scene.bands} band(s) of "
                             f"{np.dtype(scene.dtype)}. Convert it (e.g. select RGB and scale to 0-255) first.")
        windows = [(top, left) for top in window_starts(scene.height, tile, tile - overlap)
                   for left in window_starts(scene.width, tile, tile - overlap)]
        device = next(model.parameters()).device
        patches = []
        model.eval()
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            batch = np.zeros((len(chunk), 3, tile, tile), np.float32)
            for i, (top, left) in enumerate(chunk):
                pixels = scene.read(top, left, min(tile, scene.height - top), min(tile, scene.width - left))
                batch[i, :, : pixels.shape[1], : pixels.shape[2]] = pixels
            batch = (batch - MEAN) / STD
            with torch.no_grad():
                out = model(torch.from_numpy(batch).to(device), task=task)
            for (top, left), boxes, scores, labels in zip(chunk, out.boxes, out.scores, out.labels):
                patches.append({"image_id": "scene", "offset": (left, top), "boxes": boxes.float().cpu().numpy(),
                                "scores": scores.float().cpu().numpy(), "labels": labels.cpu().numpy()})
    finally:
        scene.close()
    return merge_patch_detections(patches, nms_iou)["scene"]


def scene_rings(detections: dict, transform=None) -> list[np.ndarray]:
    """The detections' polygons as closed rings (5, 2): the 4 corners through the scene's affine transform (or in
    pixels without one), the first repeated."""
    corners = obb_to_corners(torch.as_tensor(np.asarray(detections["boxes"]), dtype=torch.float64).reshape(-1, 5)).numpy()
    rings = []
    for points in corners:
        if transform is not None:  # affine: x = a col + b row + c, y = d col + e row + f (pixel corners at integers)
            a, b, c, d, e, f = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
            points = np.stack([a * points[:, 0] + b * points[:, 1] + c, d * points[:, 0] + e * points[:, 1] + f], 1)
        rings.append(np.concatenate([points, points[:1]]))
    return rings


def to_geojson(detections: dict, class_names: Sequence[str], transform=None, crs=None) -> dict:
    """A GeoJSON FeatureCollection of the detections' polygons (see the module docstring)."""
    features = []
    for ring, score, label in zip(scene_rings(detections, transform), np.asarray(detections["scores"]),
                                  np.asarray(detections["labels"])):
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]},
                         "properties": {"label": int(label), "class": class_names[int(label)], "score": float(score)}})
    collection = {"type": "FeatureCollection", "features": features}
    if crs is not None:
        epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else (crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs))
        collection["crs"] = {"type": "name", "properties": {"name": name}}
    return collection


def write_detections(path: str | Path, detections: dict, class_names: Sequence[str], transform=None, crs=None) -> None:
    """GeoJSON (.geojson/.json) or GeoPackage (.gpkg) of the detections in the scene's CRS, written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".gpkg":
        write_geopackage(path, scene_rings(detections, transform), np.asarray(detections["labels"]), class_names,
                         np.asarray(detections["scores"]), crs)
    elif path.suffix.lower() in (".geojson", ".json"):
        write_text(path, json.dumps(to_geojson(detections, class_names, transform, crs)))
    else:
        raise ValueError(f"output {path}: write .geojson/.json (GeoJSON) or .gpkg (GeoPackage), not {path.suffix!r}.")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene")
    parser.add_argument("output", help="File to write: GeoJSON (.geojson, .json) or GeoPackage (.gpkg).")
    parser.add_argument("--model", required=True, help="Folder or Hub id of an S5ForOrientedDetection model.")
    parser.add_argument("--task", help="Dataset head (dior, dota); default: the model's default task.")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=200)
    parser.add_argument("--nms_iou", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    output, scene_path = Path(args.output), Path(args.scene)
    if output.suffix.lower() not in (".geojson", ".json", ".gpkg"):
        parser.error(f"output {output}: write GeoJSON (.geojson/.json) or GeoPackage (.gpkg), not {output.suffix!r}.")
    if output.exists() and output.resolve() == scene_path.resolve():
        parser.error(f"output {output} is the input scene.")
    if output.exists() and not args.overwrite:
        parser.error(f"output {output} exists; pass --overwrite to replace it.")
    from transformers import AutoModelForObjectDetection

    from .. import S5ForOrientedDetection  # noqa: F401  (registers the Auto classes)

    model = AutoModelForObjectDetection.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).to(args.device)
    task = args.task or model.config.default_task
    class_names = model.config.get_task(task).class_names
    scene = open_scene(scene_path)
    transform, crs = scene.transform, scene.crs
    scene.close()
    detections = detect_scene(model, scene_path, task, args.tile, args.overlap, args.nms_iou)
    write_detections(output, detections, class_names, transform, crs)
    print(f"{len(detections['boxes'])} detections -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
