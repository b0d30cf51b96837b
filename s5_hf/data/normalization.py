"""How a training run normalizes its images: one home for MoE-MDF and S4P.

    norm = data_normalization({"fields": source}, {"fields": "train"}, num_channels=4)
    norm.processor        # S5ImageProcessor to save with the model (None: the default 8-bit RGB one)
    norm.labeled_transform(crop, ratio_range, source)        # weak augmentation + normalization of a labeled row
    norm.unlabeled_transform(crop, ratio_range, cutmix_p)    # UniMatch's weak/strong views of an unlabeled row

8-bit RGB sources (benchmarks, RGB folders, shards of RGB images) use the ImageNet statistics on [0, 1], as the
paper. Any other band layout (N-band folders of any dtype, `folder_to_shards` shards with an Array3D image) gets
per-band statistics of its training rows in their own units (nodata left out), which the saved processor keeps for
inference, and the rows stay in those units through the augmentation (`RawUnitsTransform`). One model normalizes
one layout: every source must have the same (bands, dtype), matching the model's ``num_channels``.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import datasets
import numpy as np

from ..image_processing_s5 import S5_IMAGE_MEAN, S5_IMAGE_STD
from .band_stats import RawUnitsTransform, compute_band_stats, processor_from_band_stats
from .folders import CheckedMasks
from .shards import card_metadata, shard_features

#: The band layout of the paper's data: 3 bands of uint8, normalized with the ImageNet statistics on [0, 1].
RGB8 = (3, "uint8")

logger = logging.getLogger(__name__)


def band_layout(source) -> tuple[int, str]:
    """(bands, dtype) of a `DataSource`'s images: a folder's headers (`LabeledFolder.check`), the Array3D image
    feature of a shard folder (`folder_to_shards`) or of a Hub dataset (its declared features); 8-bit RGB for
    benchmarks and for shards or Hub datasets of encoded images."""
    kind = source.kind
    if kind == "folder":
        info = source.folder().check()
        return info.bands, info.dtype
    if kind in ("shards", "hub"):
        if kind == "shards":
            features = shard_features(source.location)
        else:
            from .streams import hub_features  # streams imports this module's users; imported when needed

            try:
                features = hub_features(source.location)
            except (OSError, ValueError) as error:  # the data cannot be streamed either: loading it will say why
                logger.warning("%s: features not readable (%s); taking its images as 8-bit RGB.", source.location, error)
                features = None
        image = (features or {}).get("image")
        if isinstance(image, datasets.Array3D):
            return int(image.shape[2]), str(image.dtype)
    return RGB8


def nodata_fill(source) -> float | None:
    """The value a source's rows hold where the image is nodata (every band), or None if it declares none: the
    folder's nodata (or its first image's declared one), a shard card's ``nodata``. NaN nodata is 0 in the rows
    (`read_image` fills it), so for shards of it an all-zero pixel counts as nodata."""
    kind = source.kind
    if kind == "folder":
        value = source.nodata if source.nodata is not None else source.folder().check().nodata
    elif kind == "shards":
        value = card_metadata(source.location).get("nodata")
        value = None if value is None else float(value)
    else:
        return None
    return None if value is None else (0.0 if math.isnan(value) else float(value))


def nodata_valid(pixels: np.ndarray, fill: float | None) -> np.ndarray | None:
    """(H, W) bool, False where every band of `pixels` (H, W, C) equals `fill`; None (all valid) without one."""
    if fill is None:
        return None
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    return ~(pixels == fill).all(axis=2)


def statistics_items(source, split: str) -> Iterator[Any]:
    """(name, pixels (H, W, C), valid (H, W)) of every training image of a folder or shard source, streamed, as
    `compute_band_stats` takes them."""
    if source.kind == "folder":
        yield from source.folder().iter_images(split)
        return
    fill = nodata_fill(source)
    for row in source.load(split):
        pixels = np.asarray(row["image"])
        yield (types.SimpleNamespace(image=f"{source.name}={source.location} row {row.get('id')!r}"), pixels,
               nodata_valid(pixels, fill))


class Normalization(NamedTuple):
    """`data_normalization`'s answer: (processor to save or None for the default RGB one, mean, std, raw_units)."""

    processor: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    raw_units: bool

    def labeled_transform(self, crop_size, ratio_range, source, name: str | None = None):
        """Weak augmentation + normalization of a labeled row (`LabeledTransform`), in raw units for non-RGB data;
        shard and Hub rows get their mask values checked (folders check theirs when read)."""
        from ..training.augment import LabeledTransform

        transform = LabeledTransform(crop_size, tuple(ratio_range), mean=self.mean, std=self.std)
        transform = RawUnitsTransform(transform, processor=self.processor) if self.raw_units else transform
        if source.kind in ("shards", "hub"):
            task = source.task()
            transform = CheckedMasks(transform, task.num_labels, task.ignore_index,
                                     f"{name or source.name}={source.location}")
        return transform

    def unlabeled_transform(self, crop_size, ratio_range, cutmix_p: float = 0.5, nodata: float | None = None):
        """`UnlabeledTransform` of this normalization: non-RGB data stays in raw units and gets the band-wise strong
        augmentation (`strong_augment_bands`). With `nodata` (`nodata_fill`), rows without a ``valid`` column get
        one (pixels whose every band equals it), so their nodata pixels are ignored by the unlabeled loss."""
        from ..training.augment import UnlabeledTransform

        transform = UnlabeledTransform(crop_size, tuple(ratio_range), mean=self.mean, std=self.std, cutmix_p=cutmix_p,
                                       photometric="bands" if self.raw_units else "rgb")
        transform = RawUnitsTransform(transform, processor=self.processor) if self.raw_units else transform
        return transform if nodata is None else NodataMask(transform, nodata)


class NodataMask:
    """Wraps a row transform: adds the row's ``valid`` column ((H, W) bool, False where every band equals `fill`)
    from the raw image, before anything (clipping, augmentation) changes its values. Rows that already have one
    (`LabeledFolder.load(split, images_only=True)`, exact) keep it."""

    def __init__(self, transform, fill: float):
        self.transform, self.fill = transform, float(fill)

    def __call__(self, row: Mapping[str, Any], generator=None):
        if row.get("valid") is None:
            row = {**row, "valid": nodata_valid(np.asarray(row["image"]), self.fill)}
        return self.transform(row, generator=generator)


def data_normalization(sources: Mapping[str, Any], train_splits: Mapping[str, str], num_channels: int,
                       clip_percentiles=None) -> Normalization:
    """The normalization of a run training on `sources` ({name: DataSource}) with their training splits.

    All 8-bit RGB: the ImageNet statistics on [0, 1] (no processor to save). Otherwise one band layout for all
    sources (else a ValueError listing them), equal to the model's `num_channels`, and per-band statistics in one
    streaming pass over every source's training split (folders: their images; shards: their rows, nodata pixels of
    the card's ``nodata`` left out), clipped to `clip_percentiles` (low, high) if given, kept in the processor."""
    layouts = {name: band_layout(source) for name, source in sources.items()}
    if all(layout == RGB8 for layout in layouts.values()):
        if num_channels != 3:
            raise ValueError(f"The data is 8-bit RGB but the model takes {num_channels} bands (num_channels).")
        return Normalization(None, tuple(S5_IMAGE_MEAN), tuple(S5_IMAGE_STD), False)
    if len(set(layouts.values())) > 1:
        raise ValueError(f"One model normalises one band layout; the datasets differ (bands, dtype): {layouts}.")
    bands, dtype = next(iter(layouts.values()))
    if num_channels != bands:
        raise ValueError(f"The data has {bands} bands but the model takes {num_channels} (num_channels): "
                         "build the model with num_channels set to the data's band count.")
    stats = compute_band_stats(
        (item for name, source in sources.items() for item in statistics_items(source, train_splits[name])),
        percentiles=tuple(clip_percentiles) if clip_percentiles else None)
    logger.info("Band statistics over %d images (%s): mean %s, std %s", stats.images, stats.dtype, stats.mean,
                stats.std)
    return Normalization(processor_from_band_stats(stats), stats.mean, stats.std, True)


def model_num_channels(model_arguments) -> int:
    """The band count (num_channels) of the model a run will train, read before any weights are loaded."""
    if model_arguments.model_name_or_path:
        from ..configuration_s5 import S5Config

        return S5Config.from_pretrained(model_arguments.model_name_or_path).num_channels
    return int(model_arguments.overrides().get("num_channels", 3))


__all__ = ["RGB8", "Normalization", "NodataMask", "band_layout", "data_normalization", "model_num_channels",
           "nodata_fill", "nodata_valid", "statistics_items"]
