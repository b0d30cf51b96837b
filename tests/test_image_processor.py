"""S5ImageProcessor: normalisation, band checks, padding, label maps, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from s5_hf import S5ImageProcessor
from s5_hf.image_processing_s5 import S5_IMAGE_MEAN, S5_IMAGE_STD


def rgb(height=40, width=56, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_normalises_with_imagenet_statistics():
    image = rgb()
    out = S5ImageProcessor(do_resize=False)(image, return_tensors="pt")["pixel_values"]
    raw = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(S5_IMAGE_MEAN)[:, None, None]) / torch.tensor(S5_IMAGE_STD)[:, None, None]
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_resizes_to_the_training_size_by_default():
    assert S5ImageProcessor()(rgb(), return_tensors="pt")["pixel_values"].shape == (1, 3, 512, 512)


def test_pad_mode_keeps_resolution_and_pads_labels_with_void():
    processor = S5ImageProcessor(do_resize=False, do_pad=True)
    mask = Image.fromarray(np.full((40, 56), 3, dtype=np.uint8))
    out = processor(rgb(), segmentation_maps=mask, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 48, 64)
    labels = out["labels"][0]
    assert labels.shape == (48, 64) and labels.dtype == torch.int64
    assert (labels[:40, :56] == 3).all() and (labels[40:] == 255).all() and (labels[:, 56:] == 255).all()
    assert (out["pixel_values"][0, :, 40:] == 0).all()


def test_label_maps_are_resized_with_nearest_neighbour():
    mask = np.zeros((40, 56), dtype=np.uint8)
    mask[:, 28:] = 4
    out = S5ImageProcessor(size={"height": 80, "width": 112})(rgb(), segmentation_maps=Image.fromarray(mask),
                                                               return_tensors="pt")
    assert set(out["labels"].unique().tolist()) == {0, 4}


def test_wrong_band_count_is_named():
    four_bands = np.zeros((4, 16, 16), dtype=np.uint8)  # channels first, e.g. RGB + near infrared
    with pytest.raises(ValueError, match="has 4 bands but this processor normalises 3"):
        S5ImageProcessor()(four_bands, input_data_format="channels_first")


def test_multispectral_statistics_accept_more_bands():
    processor = S5ImageProcessor(do_resize=False, image_mean=[0.5] * 4, image_std=[0.25] * 4, rescale_factor=1 / 10000)
    image = np.full((4, 16, 16), 5000, dtype=np.float32)
    out = processor(image, input_data_format="channels_first", return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out, torch.zeros(1, 4, 16, 16))


def test_mask_and_image_sizes_must_agree():
    with pytest.raises(ValueError, match="Segmentation map 0"):
        S5ImageProcessor()(rgb(), segmentation_maps=Image.new("L", (10, 10)))


def test_post_process_resizes_and_takes_argmax():
    logits = torch.zeros(2, 3, 8, 8)
    logits[0, 2] = 1.0
    logits[1, 1, :, 4:] = 1.0
    maps = S5ImageProcessor().post_process_semantic_segmentation(
        type("Out", (), {"logits": logits}), target_sizes=[(16, 16), (8, 12)]
    )
    assert maps[0].shape == (16, 16) and (maps[0] == 2).all()
    assert maps[1].shape == (8, 12) and set(maps[1].unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="target sizes"):
        S5ImageProcessor().post_process_semantic_segmentation(type("Out", (), {"logits": logits}), [(8, 8)])


def test_nan_and_inf_are_refused_with_counts_per_band():
    image = np.full((3, 16, 16), 0.5, dtype=np.float32)
    image[1, :2, :2] = np.nan  # e.g. no-data pixels of a float raster
    image[2, 0, 0] = np.inf
    processor = S5ImageProcessor(do_resize=False, do_rescale=False)
    with pytest.raises(ValueError, match=r"Image 0 has 5 NaN/Inf values \(band 1: 4, band 2: 1\)"):
        processor(image, input_data_format="channels_first")
    with pytest.raises(ValueError, match=r"Image 1 has 5 NaN/Inf"):  # the index of the bad image in a batch
        processor([np.full((3, 16, 16), 0.5, dtype=np.float32), image], input_data_format="channels_first")
    finite = processor(np.nan_to_num(image, nan=0.5, posinf=0.5), input_data_format="channels_first",
                       return_tensors="pt")["pixel_values"]
    assert torch.isfinite(finite).all()
