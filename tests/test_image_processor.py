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


def test_normalizes_with_imagenet_statistics():
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


# ---- dtypes: 8-bit only with the default 1/255; other dtypes need per-band statistics -------------------------------
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_non_8bit_images_are_refused_by_the_default_scale(dtype):
    image = np.full((16, 16, 3), 1000 if dtype != np.float32 else 0.5, dtype=dtype)
    with pytest.raises(ValueError, match=rf"Image 0 is {np.dtype(dtype).name}, but this processor rescales by 1/255"):
        S5ImageProcessor(do_resize=False)(image)


def test_band_statistics_normalize_in_the_images_units_and_survive_save_pretrained(tmp_path):
    from s5_hf.data.band_stats import compute_band_stats, processor_from_band_stats

    rng = np.random.default_rng(0)
    images = [rng.integers(200, 6000, (16, 16, 4)).astype(np.uint16) for _ in range(3)]
    processor = processor_from_band_stats(compute_band_stats(images), size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    reloaded = S5ImageProcessor.from_pretrained(tmp_path)
    assert reloaded.do_rescale is False and reloaded.input_dtype == "uint16"
    stacked = np.stack(images).astype(np.float64)
    mean, std = stacked.mean(axis=(0, 1, 2)), stacked.std(axis=(0, 1, 2))
    out = reloaded(images[0], do_resize=False, return_tensors="pt")["pixel_values"][0]
    expected = (images[0].astype(np.float64) - mean) / std
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-4)
    assert reloaded(images[0], return_tensors="pt")["pixel_values"].shape == (1, 4, 32, 32)  # 4-band resize
    with pytest.raises(ValueError, match="is uint8, but this processor's per-band statistics were computed on uint16"):
        reloaded(images[0].astype(np.uint8))
    with pytest.raises(ValueError, match="has 3 bands but this processor normalises 4"):
        reloaded(images[0][..., :3])
