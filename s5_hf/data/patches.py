"""Cutting large images into square patches.

Policy (one for every dataset): windows start every `stride` pixels from the top-left corner; when the last
window would run past the border it is shifted back inside the image, so every patch is a full
`patch_size` square of real pixels and the right/bottom borders are covered (the last patches overlap
their neighbours more). An image smaller than `patch_size` along an axis gets a single window there,
padded to `patch_size` with 0 in the image and void (255) in the mask: the same as mmsegmentation's iSAID
preparation, and what random-crop training does anyway.
"""

from __future__ import annotations

import numpy as np

from ..label_sets import VOID_ID


def window_starts(length: int, patch_size: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of `length` pixels."""
    if length <= patch_size:
        return [0]
    starts = list(range(0, length - patch_size + 1, stride))
    if starts[-1] + patch_size < length:
        starts.append(length - patch_size)  # shift the last window inside the image
    return starts


def patch_windows(height: int, width: int, patch_size: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of every patch of an image, row by row."""
    if patch_size <= 0 or stride <= 0:
        raise ValueError(f"patch_size and stride must be positive, got {patch_size} and {stride}")
    return [(y, x) for y in window_starts(height, patch_size, stride) for x in window_starts(width, patch_size, stride)]


def cut_patch(pixels: np.ndarray, top: int, left: int, patch_size: int, fill: int) -> np.ndarray:
    """The `patch_size` square at (top, left), padded with `fill` where the image is smaller."""
    patch = pixels[top : top + patch_size, left : left + patch_size]
    height, width = patch.shape[:2]
    if height == patch_size and width == patch_size:
        return patch
    padding = [(0, patch_size - height), (0, patch_size - width)] + [(0, 0)] * (pixels.ndim - 2)
    return np.pad(patch, padding, constant_values=fill)


def patch_id(tile_id: str, top: int, left: int) -> str:
    """Stable id of a patch: the tile id plus its offset, e.g. ``top_mosaic_09cm_area1_y00512_x01024``."""
    return f"{tile_id}_y{top:05d}_x{left:05d}"


IMAGE_FILL = 0
MASK_FILL = VOID_ID

__all__ = ["IMAGE_FILL", "MASK_FILL", "cut_patch", "patch_id", "patch_windows", "window_starts"]
