"""Image processor for S5 models: resize or pad, scale, per-band normalisation, label maps, post-processing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling
from transformers.processing_utils import ImagesKwargs, Unpack

# ImageNet statistics on [0, 1] input, as the official S5 training pipeline normalises RGB imagery.
S5_IMAGE_MEAN = (0.485, 0.456, 0.406)
S5_IMAGE_STD = (0.229, 0.224, 0.225)
VOID_ID = 255


def clip_bands(image: np.ndarray, low, high, channel_axis: int = 0) -> np.ndarray:
    """`image` clipped per band to [low[b], high[b]], as float32 (the bounds need not be integers); the one clipping
    of the processor, the training transform and the sliding-window predictor."""
    shape = [1] * image.ndim
    shape[channel_axis] = -1
    low = np.asarray(low, dtype=np.float32).reshape(shape)
    high = np.asarray(high, dtype=np.float32).reshape(shape)
    if image.shape[channel_axis] != low.size:
        raise ValueError(f"The image has {image.shape[channel_axis]} bands but clip_min/clip_max have {low.size}.")
    return np.clip(image.astype(np.float32, copy=False), low, high)


class S5ImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to 16):
        With `do_pad`, images (and label maps) are padded at the bottom/right to a multiple of this, the patch
        size, instead of being resized.
    """

    size_divisor: int
    input_dtype: str | None
    do_clip: bool
    clip_min: list[float] | None
    clip_max: list[float] | None


class S5ImageProcessor(PilBackend):
    r"""
    Prepares remote-sensing images for S5 models.

    - Bands: `image_mean`/`image_std` have one entry per band; an image with another band count is rejected with
      an error (S5 checkpoints are RGB: convert or select bands first).
    - Scale and dtype: the default (`do_rescale=True`, `rescale_factor` 1/255, ImageNet statistics) is for 8-bit
      imagery only; any other dtype (16-bit, int16, float) is refused with an error rather than scaled by 1/255.
      For such data, store per-band statistics in the image's own units: `do_rescale=False` with
      `image_mean`/`image_std` per band (`s5_hf.data.band_stats.compute_band_stats` computes them in one streaming
      pass; `processor_from_band_stats` builds this processor and records `input_dtype`, so that
      `save_pretrained` keeps exactly the training normalisation for inference). An explicit other
      `rescale_factor` (e.g. 1/10000 for reflectances) is taken as given.
    - Clipping: with `do_clip`, each band is first clipped to [`clip_min`, `clip_max`] (per band, in the image's
      own units, e.g. the 2nd/98th percentiles of 16-bit training data from `compute_band_stats(...,
      percentiles=(2, 98))`), so that a few saturated or dark outliers do not stretch the normalisation. Clipping
      is the first step, before resizing, exactly as the training transform (`RawUnitsTransform`) and the
      sliding-window predictor apply it.
    - Size: by default images are resized to 512x512 (the training size) and the predicted masks resized back by
      `post_process_semantic_segmentation`. With `do_resize=False, do_pad=True` the native resolution (ground
      sample distance) is kept and the image is padded to a multiple of `size_divisor`; the label maps are padded
      with 255 (ignored). Large scenes should go through `s5_hf.inference` (sliding windows) instead.
    """

    valid_kwargs = S5ImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = S5_IMAGE_MEAN
    image_std = S5_IMAGE_STD
    size = {"height": 512, "width": 512}
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_pad = False
    size_divisor = 16
    #: The dtype the per-band statistics were computed on (None: any dtype the scale settings accept).
    input_dtype = None
    do_clip = False
    clip_min = None
    clip_max = None

    def __init__(self, **kwargs: Unpack[S5ImageProcessorKwargs]):
        super().__init__(**kwargs)
        if self.do_clip:
            low, high = self.clip_min, self.clip_max
            if low is None or high is None or len(low) != len(high):
                raise ValueError("do_clip needs clip_min and clip_max with one value per band.")
            if any(not lo <= hi for lo, hi in zip(low, high)):
                raise ValueError(f"clip_min {list(low)} must not exceed clip_max {list(high)} in any band.")
            if isinstance(self.image_mean, (tuple, list)) and len(self.image_mean) != len(low):
                raise ValueError(f"clip_min/clip_max have {len(low)} bands but image_mean has {len(self.image_mean)}.")

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[S5ImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        segmentation_maps (`ImageInput`, *optional*):
            Label maps of class ids (255 = void), returned as `labels` and transformed like the images (nearest
            resampling, padding with 255).
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        do_convert_rgb: bool | None,
        input_data_format: ChannelDimension | None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        bands = len(kwargs["image_mean"]) if isinstance(kwargs["image_mean"], (tuple, list)) else None
        for index, image in enumerate(images):
            if bands is not None and image.shape[0] != bands:
                raise ValueError(
                    f"Image {index} has {image.shape[0]} bands but this processor normalises {bands} "
                    f"(image_mean/image_std). Select the bands the model was trained on (RGB for S5 checkpoints)"
                    + (", or pass do_convert_rgb=True to drop an alpha band." if image.shape[0] in (2, 4) else ".")
                )
            if np.issubdtype(image.dtype, np.inexact):
                # NaN/Inf (e.g. no-data in float rasters) would turn every logit into NaN and every pixel into class 0.
                bad = ~np.isfinite(image)
                if bad.any():
                    per_band = bad.reshape(bad.shape[0], -1).sum(axis=1)
                    where = ", ".join(f"band {b}: {int(n)}" for b, n in enumerate(per_band) if n)
                    raise ValueError(
                        f"Image {index} has {int(per_band.sum())} NaN/Inf values ({where}). Fill no-data pixels "
                        f"(e.g. with the band mean) before processing."
                    )
            self._check_dtype(index, image.dtype, kwargs)
        data = {"pixel_values": self._transform(images, pad_value=0.0, **kwargs)}
        if segmentation_maps is not None:
            maps = self._prepare_image_like_inputs(
                images=segmentation_maps, expected_ndims=2, do_convert_rgb=False, input_data_format=ChannelDimension.FIRST
            )
            if len(maps) != len(images):
                raise ValueError(f"Got {len(maps)} segmentation maps for {len(images)} images.")
            for index, (label, image) in enumerate(zip(maps, images)):
                if label.shape[-2:] != image.shape[-2:]:
                    raise ValueError(
                        f"Segmentation map {index} is {label.shape[-2:]} but its image is {image.shape[-2:]}."
                    )
            map_kwargs = {**kwargs, "do_rescale": False, "do_normalize": False, "do_clip": False,
                          "resample": PILImageResampling.NEAREST}
            maps = self._transform(maps, pad_value=VOID_ID, **map_kwargs)
            data["labels"] = [m.squeeze(0).astype(np.int64) for m in maps]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_dtype(self, index: int, dtype: np.dtype, kwargs: dict) -> None:
        """Refuse a dtype the scale settings would silently misread (e.g. uint16 or float [0, 1] divided by 255)."""
        expected = kwargs.get("input_dtype", self.input_dtype)
        if expected is not None and np.dtype(dtype) != np.dtype(expected):
            raise ValueError(f"Image {index} is {np.dtype(dtype).name}, but this processor's per-band statistics "
                             f"were computed on {expected} images: pass the data the model was trained on.")
        default_scale = abs(float(kwargs["rescale_factor"]) - 1 / 255) < 1e-12
        if kwargs["do_rescale"] and default_scale and np.dtype(dtype) != np.uint8:
            raise ValueError(
                f"Image {index} is {np.dtype(dtype).name}, but this processor rescales by 1/255 (8-bit imagery). "
                "For other dtypes, store per-band statistics in the image's own units: "
                "S5ImageProcessor(do_rescale=False, image_mean=[...], image_std=[...]), e.g. "
                "processor_from_band_stats(compute_band_stats(images)) from s5_hf.data.band_stats "
                "(or give an explicit rescale_factor)."
            )

    def _resize_any(self, image: np.ndarray, size, resample) -> np.ndarray:
        """Bilinear/nearest resize of a (C, H, W) array of any dtype and band count (Pillow takes 8-bit 1/3 bands
        only); integer labels keep their values."""
        height, width = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        if resample == PILImageResampling.NEAREST:
            out = F.interpolate(tensor, size=(height, width), mode="nearest")
        else:
            out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
        out = out[0].numpy()
        return out.astype(image.dtype) if np.issubdtype(image.dtype, np.integer) and resample == PILImageResampling.NEAREST else out

    def _transform(
        self,
        images: list[np.ndarray],
        pad_value: float,
        do_resize: bool,
        size,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool,
        size_divisor: int,
        do_clip: bool = False,
        clip_min=None,
        clip_max=None,
        **kwargs,
    ) -> list[np.ndarray]:
        out = []
        for image in images:
            if do_clip:
                image = clip_bands(image, clip_min, clip_max)
            if do_resize:
                if image.dtype == np.uint8 and image.shape[0] in (1, 3):
                    image = self.resize(image=image, size=size, resample=resample)
                else:
                    image = self._resize_any(image, size, resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            if do_pad:
                height, width = image.shape[-2:]
                pad_h, pad_w = -height % size_divisor, -width % size_divisor
                image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=pad_value)
            out.append(image)
        return out

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Class-id maps (one per image) from model outputs, resized to `target_sizes` (height, width) if given."""
        logits = outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for {len(logits)} images.")
        maps = []
        for row, target in zip(logits, target_sizes):
            resized = F.interpolate(row[None].float(), size=tuple(int(s) for s in target), mode="bilinear",
                                    align_corners=False)
            maps.append(resized[0].argmax(dim=0))
        return maps


__all__ = ["S5ImageProcessor", "S5_IMAGE_MEAN", "S5_IMAGE_STD", "clip_bands"]
