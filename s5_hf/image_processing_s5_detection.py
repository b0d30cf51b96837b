"""Image processor for S5 oriented detection: S5 preprocessing at the detection size plus box post-processing."""

from __future__ import annotations

import torch

from .image_processing_s5 import S5ImageProcessor
from .obb_geometry import obb_to_corners, polygon_to_obb


class S5DetectionImageProcessor(S5ImageProcessor):
    r"""
    Prepares images for `S5ForOrientedDetection`: resize to 1024 x 1024 (DIOR-R's 800 px images
    become 1024), ImageNet mean/std, padding to a multiple of 32. `post_process_object_detection` turns the
    model's detections into per-image dicts in the coordinates of the original images: `boxes` as
    (xmin, ymin, xmax, ymax), the axis-aligned hull (the transformers convention, so `pipeline("object-detection")`
    works), `oriented_boxes` (cx, cy, w, h, angle) and the 4 `corners`.
    """

    size = {"height": 1024, "width": 1024}
    do_pad = True
    size_divisor = 32

    def post_process_object_detection(
        self, outputs, threshold: float = 0.05, target_sizes: list[tuple[int, int]] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: `scores`, `labels`, `oriented_boxes` `(n, 5)` (cx, cy, w, h, angle), their `corners` `(n, 4, 2)`
        and `boxes` `(n, 4)`, the corners' axis-aligned hull (xmin, ymin, xmax, ymax).

        With `target_sizes` (original `(height, width)` per image) and `input_size` (the model's input
        `(height, width)` before padding; defaults to `self.size`), corners are scaled by the per-axis factors
        and the boxes recomputed from them (exact for uniform scaling; otherwise the minimum-area rectangle of
        the scaled corners, since a rotated box scaled unevenly is a parallelogram).
        """
        results = []
        if target_sizes is not None and len(target_sizes) != len(outputs.boxes):
            raise ValueError(f"Got {len(target_sizes)} target sizes for {len(outputs.boxes)} images.")
        for i, (boxes, scores, labels) in enumerate(zip(outputs.boxes, outputs.scores, outputs.labels)):
            keep = scores > threshold
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            corners = obb_to_corners(boxes)
            if target_sizes is not None:
                in_h, in_w = input_size if input_size is not None else (self.size["height"], self.size["width"])
                out_h, out_w = target_sizes[i]
                corners = corners * corners.new_tensor([out_w / in_w, out_h / in_h])
                boxes = polygon_to_obb(corners) if len(corners) else boxes
            hull = torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=1) if len(corners) else boxes.new_zeros(0, 4)
            results.append({"scores": scores, "labels": labels, "boxes": hull, "oriented_boxes": boxes, "corners": corners})
        return results


__all__ = ["S5DetectionImageProcessor"]
