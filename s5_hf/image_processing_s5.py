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


class S5ImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to 16):
        With `do_pad`, images (and label maps) are padded at the bottom/right to a multiple of this, the patch
        size, instead of being resized.
    """

    size_divisor: int


class S5ImageProcessor(PilBackend):
    r"""
    Prepares remote-sensing images for S5 models.

    - Bands: `image_mean`/`image_std` have one entry per band; an image with another band count is rejected with
      an error (S5 checkpoints are RGB: convert or select bands first).
    - Scale: `rescale_factor` maps raw values to [0, 1] (1/255 for 8-bit imagery; e.g. 1/65535 or 1/10000 for
      16-bit products).
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

    def __init__(self, **kwargs: Unpack[S5ImageProcessorKwargs]):
        super().__init__(**kwargs)

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
            map_kwargs = {**kwargs, "do_rescale": False, "do_normalize": False, "resample": PILImageResampling.NEAREST}
            maps = self._transform(maps, pad_value=VOID_ID, **map_kwargs)
            data["labels"] = [m.squeeze(0).astype(np.int64) for m in maps]
        return BatchFeature(data=data, tensor_type=return_tensors)

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
        **kwargs,
    ) -> list[np.ndarray]:
        out = []
        for image in images:
            if do_resize:
                image = self.resize(image=image, size=size, resample=resample)
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


__all__ = ["S5ImageProcessor", "S5_IMAGE_MEAN", "S5_IMAGE_STD"]
