"""Per-band statistics of a training set in one streaming pass, for `S5ImageProcessor` normalisation of any dtype.

    stats = compute_band_stats(source.folder().iter_images("train"))   # or any (pixels, valid) iterable
    processor = processor_from_band_stats(stats)                      # do_rescale=False, per-band mean/std
    processor.save_pretrained(model_folder)                           # inference reuses exactly these

Memory is bounded by one image: each image's per-band count, mean and sum of squared deviations are merged into
the running totals with the parallel-variance update (Chan et al.), in float64, so the result does not depend on
the dataset size's effect on rounding as a plain sum of squares would. Nodata pixels (``valid`` False) are left
out; NaN anywhere else is an error naming the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BandStats:
    """Mean and (population) standard deviation per band in the images' own units, over `count` valid pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int
    dtype: str
    images: int

    @property
    def bands(self) -> int:
        return len(self.mean)


def compute_band_stats(items: Iterable[Any], min_std: float = 1e-6) -> BandStats:
    """Statistics over `items`: (pixels (H, W, C), valid (H, W) bool) pairs, or (pair, pixels, valid) triples as
    `LabeledFolder.iter_images` yields, or bare (H, W, C) arrays (every pixel valid).

    Every image must have the same band count and dtype. A band whose std is below `min_std` (constant) is an
    error: dividing by it would blow that band up."""
    count = mean = m2 = None
    dtype, images = None, 0
    for item in items:
        name = f"image {images}"
        if isinstance(item, tuple) and len(item) == 3:
            pair, pixels, valid = item
            name = str(getattr(pair, "image", name))
        elif isinstance(item, tuple):
            pixels, valid = item
        else:
            pixels, valid = item, None
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if dtype is None:
            dtype, bands = pixels.dtype, pixels.shape[2]
            count, mean, m2 = 0, np.zeros(bands), np.zeros(bands)
        elif (pixels.shape[2], pixels.dtype) != (mean.shape[0], dtype):
            raise ValueError(f"{name}: {pixels.shape[2]} band(s) of {pixels.dtype}, but the first image has "
                             f"{mean.shape[0]} of {dtype}.")
        values = pixels.reshape(-1, pixels.shape[2]) if valid is None else pixels[np.asarray(valid, bool)]
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: NaN/Inf values outside the nodata pixels; declare them as nodata or fill them.")
        n = values.shape[0]
        images += 1
        if n == 0:
            continue
        batch_mean = values.mean(axis=0)
        batch_m2 = ((values - batch_mean) ** 2).sum(axis=0)
        total = count + n
        delta = batch_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + batch_m2 + delta**2 * (count * n / total)
        count = total
    if not count:
        raise ValueError("No valid pixels to compute band statistics from (empty data, or every pixel is nodata).")
    std = np.sqrt(m2 / count)
    flat = [b for b, s in enumerate(std) if not s > min_std]
    if flat:
        raise ValueError(f"Band(s) {flat} are constant over the data (std {[float(std[b]) for b in flat]}); drop "
                         "them or check the nodata value.")
    return BandStats(tuple(float(v) for v in mean), tuple(float(v) for v in std), int(count), np.dtype(dtype).name,
                     images)


def processor_from_band_stats(stats: BandStats, **kwargs):
    """An `S5ImageProcessor` that normalises with `stats` in the data's own units (`do_rescale=False`) and accepts
    only the dtype the statistics were computed on."""
    from ..image_processing_s5 import S5ImageProcessor

    if not all(math.isfinite(v) for v in stats.mean + stats.std):
        raise ValueError("Band statistics must be finite.")
    return S5ImageProcessor(do_rescale=False, image_mean=list(stats.mean), image_std=list(stats.std),
                            input_dtype=stats.dtype, **kwargs)



class RawUnitsTransform:
    """Wraps a `LabeledTransform` built with band statistics as mean/std: the row's image (any dtype, any band
    count) becomes float32 in its own units first, so the geometric augmentation and `(x - mean) / std` apply to it
    exactly as the saved processor will at inference (the augmentation's uint8/[0, 1] conventions do not)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, row, generator=None):
        return self.transform({**row, "image": np.asarray(row["image"], dtype=np.float32)}, generator=generator)


__all__ = ["BandStats", "RawUnitsTransform", "compute_band_stats", "processor_from_band_stats"]
