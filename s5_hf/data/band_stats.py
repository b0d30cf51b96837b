"""Per-band statistics of a training set in one streaming pass, for `S5ImageProcessor` normalisation of any dtype.

    stats = compute_band_stats(source.folder().iter_images("train"))   # or any (pixels, valid) iterable
    processor = processor_from_band_stats(stats)                      # do_rescale=False, per-band mean/std
    processor.save_pretrained(model_folder)                           # inference reuses exactly these

With ``percentiles=(2, 98)`` the pass also counts a fixed-size histogram per band (`BandHistogram`) and the
processor clips each band to its percentiles before normalizing (for 16-bit data with a few saturated pixels).

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
    """Mean and (population) standard deviation per band in the images' own units, over `count` valid pixels.

    With percentile clipping (`compute_band_stats(..., percentiles=(2, 98))`), `clip_min`/`clip_max` are each band's
    low/high percentile and `mean`/`std` are those of the values clipped to them (what the model then sees)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int
    dtype: str
    images: int
    percentiles: tuple[float, float] | None = None
    clip_min: tuple[float, ...] | None = None
    clip_max: tuple[float, ...] | None = None

    @property
    def bands(self) -> int:
        return len(self.mean)


#: Bins of the per-band histogram of float data (integer data up to 16 bits is counted exactly, one bin per value).
FLOAT_BINS = 4096


class BandHistogram:
    """A fixed-size histogram per band, merged image by image, for approximate percentiles in flat memory.

    Integer data (uint8, uint16, int16) is counted exactly, one bin per possible value (at most 65536 bins x bands
    int64). Float data uses `bins` bins over a range that doubles whenever an image falls outside it (adjacent bins
    are merged in pairs, so no count is ever re-estimated); a percentile is then exact to within one bin, at most
    2/`bins` of the data's range."""

    def __init__(self, bands: int, dtype: np.dtype, bins: int = FLOAT_BINS):
        self.dtype, self.bands = np.dtype(dtype), bands
        if np.issubdtype(self.dtype, np.integer):
            if self.dtype.itemsize > 2:
                raise ValueError(f"Percentiles of {self.dtype.name} data are not supported (at most 16-bit integers).")
            info = np.iinfo(self.dtype)
            self.low, self.width, self.exact = float(info.min), 1.0, True
            self.counts = np.zeros((bands, int(info.max) - int(info.min) + 1), dtype=np.int64)
        else:
            if bins % 2:
                raise ValueError("The histogram needs an even number of bins.")
            self.low, self.width, self.exact = None, None, False
            self.counts = np.zeros((bands, bins), dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        """Count `values` (N, bands) of valid pixels."""
        if not len(values):
            return
        if self.exact:
            offset = (values.astype(np.int64) - int(self.low))
            for band in range(self.bands):
                found = np.bincount(offset[:, band])  # only up to the largest value: cheap for small tiles
                self.counts[band, : len(found)] += found
            return
        values = values.astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
        bins = self.counts.shape[1]
        if self.low is None:
            self.low, self.width = lo, max(hi - lo, abs(lo) * 1e-6, 1e-12) / bins * (1 + 1e-9)
        while lo < self.low or hi >= self.low + bins * self.width:
            merged = self.counts.reshape(self.bands, bins // 2, 2).sum(axis=2)
            empty = np.zeros_like(merged)
            self.width *= 2
            if lo < self.low:  # grow downwards: the old range becomes the upper half
                self.counts = np.concatenate([empty, merged], axis=1)
                self.low -= (bins // 2) * self.width
            else:
                self.counts = np.concatenate([merged, empty], axis=1)
        index = np.clip(((values - self.low) / self.width).astype(np.int64), 0, bins - 1)
        for band in range(self.bands):
            self.counts[band] += np.bincount(index[:, band], minlength=bins)

    def percentile(self, q: float) -> np.ndarray:
        """Per band, the value below which `q` % of the counted values lie (integers: the smallest value reaching
        that share, as numpy's 'inverted_cdf'; floats: interpolated within the bin)."""
        cumulative = np.cumsum(self.counts, axis=1)
        target = q / 100.0 * cumulative[:, -1]
        out = np.empty(self.bands)
        for band in range(self.bands):
            index = int(np.searchsorted(cumulative[band], target[band], side="left"))
            index = min(index, self.counts.shape[1] - 1)
            if self.exact:
                out[band] = self.low + index
            else:
                before = cumulative[band, index - 1] if index else 0
                inside = self.counts[band, index]
                fraction = (target[band] - before) / inside if inside else 0.0
                out[band] = self.low + (index + fraction) * self.width
        return out

    def clipped_moments(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per band of the counted values clipped to [low, high] (bin centres for float data)."""
        bins = self.counts.shape[1]
        centres = self.low + (np.arange(bins) + (0.0 if self.exact else 0.5)) * self.width
        means, stds = np.empty(self.bands), np.empty(self.bands)
        for band in range(self.bands):
            values = np.clip(centres, low[band], high[band])
            weights = self.counts[band] / self.counts[band].sum()
            means[band] = float((weights * values).sum())
            stds[band] = float(np.sqrt((weights * (values - means[band]) ** 2).sum()))
        return means, stds


def compute_band_stats(items: Iterable[Any], min_std: float = 1e-6,
                       percentiles: tuple[float, float] | None = None) -> BandStats:
    """Statistics over `items`: (pixels (H, W, C), valid (H, W) bool) pairs, or (pair, pixels, valid) triples as
    `LabeledFolder.iter_images` yields, or bare (H, W, C) arrays (every pixel valid).

    Every image must have the same band count and dtype. A band whose std is below `min_std` (constant) is an
    error: dividing by it would blow that band up.

    `percentiles=(low, high)`, e.g. (2, 98), also records each band's low/high percentile (`BandHistogram`: flat
    memory, exact for integer data) for clipping 16-bit data before normalizing; mean and std are then those of
    the clipped values."""
    if percentiles is not None:
        percentiles = (float(percentiles[0]), float(percentiles[1]))
        if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles}.")
    count = mean = m2 = None
    dtype, images, histogram = None, 0, None
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
            if percentiles is not None:
                histogram = BandHistogram(bands, dtype)
        elif (pixels.shape[2], pixels.dtype) != (mean.shape[0], dtype):
            raise ValueError(f"{name}: {pixels.shape[2]} band(s) of {pixels.dtype}, but the first image has "
                             f"{mean.shape[0]} of {dtype}.")
        raw = pixels.reshape(-1, pixels.shape[2]) if valid is None else pixels[np.asarray(valid, bool)]
        values = raw.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: NaN/Inf values outside the nodata pixels; declare them as nodata or fill them.")
        n = values.shape[0]
        images += 1
        if n == 0:
            continue
        if histogram is not None:
            histogram.add(raw)
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
    clip_min = clip_max = None
    if histogram is not None:
        low, high = histogram.percentile(percentiles[0]), histogram.percentile(percentiles[1])
        mean, std = histogram.clipped_moments(low, high)
        clip_min, clip_max = tuple(float(v) for v in low), tuple(float(v) for v in high)
    flat = [b for b, s in enumerate(std) if not s > min_std]
    if flat:
        raise ValueError(f"Band(s) {flat} are constant over the data{' after clipping' if histogram else ''} (std "
                         f"{[float(std[b]) for b in flat]}); drop them or check the nodata value.")
    return BandStats(tuple(float(v) for v in mean), tuple(float(v) for v in std), int(count), np.dtype(dtype).name,
                     images, percentiles, clip_min, clip_max)


def processor_from_band_stats(stats: BandStats, **kwargs):
    """An `S5ImageProcessor` that normalizes with `stats` in the data's own units (`do_rescale=False`), clips to
    their percentiles first if they have them, and accepts only the dtype the statistics were computed on."""
    from ..image_processing_s5 import S5ImageProcessor

    if not all(math.isfinite(v) for v in stats.mean + stats.std):
        raise ValueError("Band statistics must be finite.")
    if stats.clip_min is not None:
        kwargs = {"do_clip": True, "clip_min": list(stats.clip_min), "clip_max": list(stats.clip_max), **kwargs}
    return S5ImageProcessor(do_rescale=False, image_mean=list(stats.mean), image_std=list(stats.std),
                            input_dtype=stats.dtype, **kwargs)


class RawUnitsTransform:
    """Wraps a `LabeledTransform` built with band statistics as mean/std: the row's image (any dtype, any band
    count) becomes float32 in its own units first, so the geometric augmentation and `(x - mean) / std` apply to it
    exactly as the saved processor will at inference (the augmentation's uint8/[0, 1] conventions do not).

    With `clip_min`/`clip_max` (per band; or `processor=` a processor with `do_clip`), the image is clipped first,
    by the processor's own `clip_bands`, so training and inference clip identically."""

    def __init__(self, transform, clip_min=None, clip_max=None, *, processor=None):
        if processor is not None and getattr(processor, "do_clip", False):
            clip_min, clip_max = processor.clip_min, processor.clip_max
        if (clip_min is None) != (clip_max is None):
            raise ValueError("RawUnitsTransform needs both clip_min and clip_max, or neither.")
        self.transform, self.clip_min, self.clip_max = transform, clip_min, clip_max

    def __call__(self, row, generator=None):
        from ..image_processing_s5 import clip_bands

        image = np.asarray(row["image"], dtype=np.float32)
        if self.clip_min is not None:
            image = clip_bands(image if image.ndim == 3 else image[..., None], self.clip_min, self.clip_max,
                               channel_axis=-1)
        return self.transform({**row, "image": image}, generator=generator)


__all__ = ["BandHistogram", "BandStats", "RawUnitsTransform", "compute_band_stats", "processor_from_band_stats"]
