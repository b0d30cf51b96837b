"""Tests of s5_hf.training.augment: geometry against PIL, colour operations against colorsys/hand formulas, the draw order
and seed reproducibility that exact resume relies on, and the per-row transforms on a real `datasets` table."""

import colorsys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from s5_hf.training.augment import (
    AugmentedDataset,
    LabeledTransform,
    UnlabeledTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    cutmix_box,
    cutmix_images,
    gaussian_blur,
    hsv_to_rgb,
    image_to_tensor,
    mask_to_tensor,
    normalize,
    random_crop,
    random_grayscale,
    random_rescale,
    resize_pair,
    rgb_to_hsv,
    sample_generator,
    strong_augment,
    weak_augment,
)
from s5_hf.image_processing_s5 import S5_IMAGE_MEAN, S5_IMAGE_STD


def rgb_image(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def id_mask(seed: int, height: int = 40, width: int = 48, num_classes: int = 6) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, num_classes, size=(height, width), dtype=np.uint8)


def pil_rows(count: int = 3):
    return [{"image": Image.fromarray(rgb_image(i)), "mask": Image.fromarray(id_mask(i))} for i in range(count)]


def assert_outputs_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y)


# --------------------------------------------------------------------------------------------------------------
# Conversion and normalisation


def test_conversions():
    image = image_to_tensor(Image.fromarray(rgb_image(0)))
    assert image.shape == (3, 40, 48) and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), rgb_image(0))
    assert image_to_tensor(np.zeros((5, 6), dtype=np.float32)).shape == (1, 5, 6)
    mask = mask_to_tensor(Image.fromarray(id_mask(0)))
    assert mask.dtype == torch.int64 and mask.shape == (40, 48)
    with pytest.raises(ValueError, match="RGBA"):
        image_to_tensor(Image.new("RGBA", (4, 4)))
    with pytest.raises(ValueError, match="colour-coded"):
        mask_to_tensor(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match="uint8"):
        image_to_tensor(np.zeros((4, 4, 3), dtype=np.int32))


def test_normalize_matches_image_processor_statistics():
    image = torch.tensor([[[255]], [[0]], [[51]]], dtype=torch.uint8)
    expected = [(1.0 - S5_IMAGE_MEAN[0]) / S5_IMAGE_STD[0], (0.0 - S5_IMAGE_MEAN[1]) / S5_IMAGE_STD[1],
                (0.2 - S5_IMAGE_MEAN[2]) / S5_IMAGE_STD[2]]
    out = normalize(image)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.reshape(-1).numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(normalize(image.float() / 255), out)
    assert S5_IMAGE_MEAN == (0.485, 0.456, 0.406) and S5_IMAGE_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="4 bands"):
        normalize(torch.zeros(4, 2, 2))


# --------------------------------------------------------------------------------------------------------------
# Weak augmentation


@pytest.mark.parametrize("size", [(18, 26), (80, 114), (51, 73)])
def test_resize_matches_pil(size):
    array, ids = rgb_image(1, 37, 53), id_mask(1, 37, 53)
    image, mask = resize_pair(image_to_tensor(array), mask_to_tensor(ids), size)
    reference = np.asarray(Image.fromarray(array).resize(size[::-1], Image.BILINEAR))
    reference_mask = np.asarray(Image.fromarray(ids).resize(size[::-1], Image.NEAREST))
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - reference).max() <= 1
    np.testing.assert_array_equal(mask.numpy(), reference_mask)


def test_random_rescale_range_and_aspect():
    image, mask = image_to_tensor(rgb_image(0, 40, 60)), mask_to_tensor(id_mask(0, 40, 60))
    long_sides = []
    for seed in range(40):
        out_image, out_mask = random_rescale(image, mask, sample_generator(seed))
        height, width = out_mask.shape
        assert out_image.shape == (3, height, width) and out_image.dtype == torch.uint8
        assert 30 <= width <= 120 and height == int(40 * width / 60 + 0.5)
        assert set(out_mask.unique().tolist()) <= set(range(6))
        long_sides.append(width)
    assert min(long_sides) < 60 < max(long_sides)  # both down- and up-scaling occur


def test_random_crop_pads_with_zero_and_void():
    image = torch.full((3, 10, 20), 7, dtype=torch.uint8)
    mask = torch.ones(10, 20, dtype=torch.int64)
    out_image, out_mask = random_crop(image, mask, 32, sample_generator(0))
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    # Padding is at the bottom/right, so the whole image sits in the top-left corner.
    assert (out_image[:, :10, :20] == 7).all() and (out_image[:, 10:] == 0).all() and (out_image[:, :, 20:] == 0).all()
    assert (out_mask[:10, :20] == 1).all() and (out_mask[10:] == 255).all() and (out_mask[:, 20:] == 255).all()


def test_random_crop_is_a_window_of_the_input():
    values = torch.arange(30 * 40).reshape(30, 40)
    image = values[None].float()
    for seed in range(5):
        out_image, out_mask = random_crop(image, values, (16, 24), sample_generator(seed))
        y, x = divmod(int(out_mask[0, 0]), 40)
        assert torch.equal(out_mask, values[y : y + 16, x : x + 24])
        assert torch.equal(out_image[0].long(), out_mask)


def test_weak_augment_keeps_image_and_mask_aligned_and_flips_both_ways():
    # Band 0 of the image carries the mask ids, so any geometric mismatch shows. Ratio 1: no rescale.
    ids = torch.arange(16 * 16).reshape(16, 16)
    image = torch.stack([ids.float(), torch.zeros(16, 16), torch.zeros(16, 16)])
    seen_h, seen_v = 0, 0
    for seed in range(60):
        out_image, out_mask = weak_augment(image, ids, 16, sample_generator(seed), ratio_range=(1.0, 1.0))
        assert torch.equal(out_image[0].long(), out_mask)
        seen_h += int(out_mask[0, 0] % 16 == 15)  # top-left pixel came from the right edge
        seen_v += int(out_mask[0, 0] // 16 == 15)  # ... or from the bottom edge
    assert 15 <= seen_h <= 45 and 15 <= seen_v <= 45  # p = 0.5 each


def test_weak_augment_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same size"):
        weak_augment(torch.zeros(3, 8, 8), torch.zeros(8, 9, dtype=torch.long), 8, sample_generator(0))


# --------------------------------------------------------------------------------------------------------------
# Colour operations


def test_rgb_hsv_against_colorsys():
    rgb = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(0))
    rgb[:, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # grey: hue and saturation 0
    rgb[:, 0, 1] = 0.0  # black
    hsv = rgb_to_hsv(rgb)
    for y in range(7):
        for x in range(5):
            expected = colorsys.rgb_to_hsv(*rgb[:, y, x].tolist())
            np.testing.assert_allclose(hsv[:, y, x].numpy(), expected, atol=1e-5)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb, atol=1e-5, rtol=0)


def test_color_adjustments_by_hand():
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(adjust_hue(red, 0.5), torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1))  # cyan
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1), atol=1e-6, rtol=0)
    pixel = torch.tensor([0.6, 0.2, 0.4]).view(3, 1, 1)
    torch.testing.assert_close(adjust_brightness(pixel, 2.0), torch.tensor([1.0, 0.4, 0.8]).view(3, 1, 1))
    luma = 0.299 * 0.6 + 0.587 * 0.2 + 0.114 * 0.4
    torch.testing.assert_close(adjust_saturation(pixel, 0.0), torch.full((3, 1, 1), luma))
    two = torch.cat([pixel, torch.tensor([0.0, 0.0, 0.0]).view(3, 1, 1)], dim=2)  # mean luma = luma / 2
    torch.testing.assert_close(adjust_contrast(two, 0.0), torch.full((3, 1, 2), luma / 2))
    torch.testing.assert_close(adjust_contrast(two, 1.0), two)


def test_color_jitter_probability_dtype_and_extra_bands():
    image = torch.cat([image_to_tensor(rgb_image(2, 12, 12)), torch.full((1, 12, 12), 99, dtype=torch.uint8)])
    assert torch.equal(color_jitter(image, sample_generator(0), p=0.0), image)
    out = color_jitter(image, sample_generator(0), p=1.0)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert not torch.equal(out[:3], image[:3])
    assert torch.equal(out[3], image[3])  # a fourth (e.g. NIR) band is not a colour
    with pytest.raises(ValueError, match="R, G, B"):
        color_jitter(torch.zeros(2, 4, 4), sample_generator(0))
    with pytest.raises(ValueError, match="R, G, B"):
        strong_augment(torch.zeros(1, 4, 4), sample_generator(0))


def test_random_grayscale_matches_pil_luma():
    array = rgb_image(3, 9, 11)
    out = random_grayscale(image_to_tensor(array), sample_generator(0), p=1.0)
    reference = np.asarray(Image.fromarray(array).convert("L")).astype(int)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()
    assert np.abs(out[0].numpy().astype(int) - reference).max() <= 1
    assert torch.equal(random_grayscale(image_to_tensor(array), sample_generator(0), p=0.0), image_to_tensor(array))


def test_gaussian_blur_of_a_point_has_the_drawn_sigma():
    delta = torch.zeros(2, 31, 31)
    delta[:, 15, 15] = 1.0
    for seed in range(50):
        # Documented draws: one for p, then sigma uniform in (0.1, 2.0).
        replay = sample_generator(seed)
        applied = torch.rand((), generator=replay).item() < 0.5
        sigma = 0.1 + 1.9 * torch.rand((), generator=replay).item()
        if applied and sigma > 0.8:
            break
    out = gaussian_blur(delta, sample_generator(seed))
    assert out.sum(dim=(1, 2)).allclose(torch.ones(2))
    offsets = torch.arange(31.0) - 15
    variance = (out[0].sum(0) * offsets**2).sum()
    assert variance.item() == pytest.approx(sigma**2, rel=0.05)
    torch.testing.assert_close(out[0], out[0].flip(0).flip(1))
    constant = torch.full((3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(constant, sample_generator(seed)), constant)


# --------------------------------------------------------------------------------------------------------------
# CutMix


def test_cutmix_box_is_one_rectangle_of_bounded_area():
    applied = 0
    for seed in range(40):
        box = cutmix_box(64, 64, sample_generator(seed))
        assert box.shape == (64, 64) and box.dtype == torch.uint8
        if box.any():
            applied += 1
            rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
            height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert box.sum() == height * width  # a filled axis-aligned rectangle
            assert 0 < box.sum() <= 0.4 * 64 * 64
    assert 10 <= applied <= 30  # p = 0.5
    assert not cutmix_box(64, 64, sample_generator(0), p=0.0).any()
    with pytest.raises(RuntimeError, match="fits"):
        cutmix_box(1, 500, sample_generator(0), p=1.0, max_tries=20)


def test_cutmix_images_takes_partner_inside_box():
    images, partners = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    boxes = torch.zeros(2, 4, 4, dtype=torch.uint8)
    boxes[0, 1:3, 1:3] = 1
    mixed = cutmix_images(images, partners, boxes)
    assert torch.equal(mixed[:, 0], boxes.float()) and torch.equal(mixed[:, 2], boxes.float())
    with pytest.raises(ValueError, match="boxes"):
        cutmix_images(images, partners, boxes[0])


# --------------------------------------------------------------------------------------------------------------
# Transforms on `datasets` rows, reproducibility


@pytest.fixture(scope="module")
def labeled_dataset():
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    rows = pil_rows(4)
    return datasets.Dataset.from_dict({"image": [r["image"] for r in rows], "mask": [r["mask"] for r in rows]},
                                      features=features)


def test_labeled_transform_output(labeled_dataset):
    transform = LabeledTransform(64, seed=3)
    zero = normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))
    padded_somewhere = False
    for row in labeled_dataset:
        image, mask = transform(row)
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert mask.shape == (64, 64) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= set(range(6)) | {255}
        padding = mask == 255
        padded_somewhere |= bool(padding.any())
        assert torch.allclose(image[:, padding], zero.view(3, 1).expand(3, int(padding.sum())))
    assert padded_somewhere  # 40x48 rescaled by <= 2 is often smaller than 64


def test_unlabeled_transform_follows_documented_draw_order():
    row = {"image": Image.fromarray(rgb_image(5)), "mask": Image.fromarray(id_mask(5))}
    out = UnlabeledTransform(32)(row, generator=sample_generator(11))
    assert [tuple(t.shape) for t in out] == [(3, 32, 32)] * 3 + [(32, 32)] * 3
    assert [t.dtype for t in out] == [torch.float32] * 3 + [torch.int64, torch.uint8, torch.uint8]
    # Replaying the public functions in the documented order gives the same sample.
    generator = sample_generator(11)
    image = image_to_tensor(row["image"])
    weak, ignore = weak_augment(image, torch.zeros(40, 48, dtype=torch.uint8), 32, generator)
    strong1, strong2 = strong_augment(weak, generator), strong_augment(weak, generator)
    box1, box2 = cutmix_box(32, 32, generator), cutmix_box(32, 32, generator)
    expected = (normalize(weak), normalize(strong1), normalize(strong2), ignore.long(), box1, box2)
    assert_outputs_equal(out, expected)
    assert set(out[3].unique().tolist()) <= {0, 255}


def test_unlabeled_ignore_mask_marks_padding():
    array = rgb_image(6, 10, 12)
    original = normalize(image_to_tensor(array))
    zero = normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))
    for seed in range(4):
        weak, _, _, ignore, _, _ = UnlabeledTransform(40, ratio_range=(1.0, 1.0))(
            {"image": Image.fromarray(array)}, generator=sample_generator(seed)
        )
        # No rescale: the image is a 10x12 block in one (flip-dependent) corner, the rest is padding.
        assert int((ignore == 0).sum()) == 120 and set(ignore.unique().tolist()) == {0, 255}
        rows, cols = (ignore == 0).any(1).nonzero().squeeze(1), (ignore == 0).any(0).nonzero().squeeze(1)
        block = weak[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert any(torch.equal(block, original.flip(dims)) for dims in ((), (-1,), (-2,), (-1, -2)))
        assert torch.allclose(weak[:, ignore == 255], zero.view(3, 1).expand(3, 1600 - 120))


def test_same_seed_same_output_different_seed_different_output():
    row = pil_rows(1)[0]
    for transform in (LabeledTransform(32), UnlabeledTransform(32)):
        a = transform(row, generator=sample_generator(5, 0, 7))
        b = transform(row, generator=sample_generator(5, 0, 7))
        c = transform(row, generator=sample_generator(5, 1, 7))
        assert_outputs_equal(a, b)
        assert any(not torch.equal(x, y) for x, y in zip(a, c))
    # The transform's own generator: two transforms with one seed produce the same sequence.
    first, second = UnlabeledTransform(32, seed=9), UnlabeledTransform(32, seed=9)
    for _ in range(2):
        assert_outputs_equal(first(row), second(row))


def test_augmented_dataset_depends_only_on_seed_epoch_index(labeled_dataset):
    dataset = AugmentedDataset(labeled_dataset, LabeledTransform(32), seed=1)
    forward = [dataset[i] for i in range(len(dataset))]
    backward = [dataset[i] for i in reversed(range(len(dataset)))][::-1]
    for a, b in zip(forward, backward):
        assert_outputs_equal(a, b)
    # Worker processes see the same samples as the main process.
    serial = list(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2))
    for a, b in zip(serial, parallel):
        assert_outputs_equal(a, b)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], forward[0][0])
    with pytest.raises(ValueError, match="non-negative"):
        sample_generator(-1)


def test_augmented_stream_depends_only_on_seed_epoch_and_row_id(labeled_dataset):
    from s5_hf.training.augment import row_seed_key

    rows = labeled_dataset.add_column("id", [f"tile-{i}" for i in range(len(labeled_dataset))])
    stream = rows.to_iterable_dataset(num_shards=2)
    augmented = AugmentedDataset(stream, LabeledTransform(32), seed=1)
    # The same class for streams, but iterable: a DataLoader iterates it and its workers split the shards.
    assert isinstance(augmented, AugmentedDataset) and isinstance(augmented, torch.utils.data.IterableDataset)
    assert not isinstance(AugmentedDataset(rows, LabeledTransform(32)), torch.utils.data.IterableDataset)
    by_id = {}
    for row, sample in zip(stream, augmented):
        expected = LabeledTransform(32)(row, generator=sample_generator(1, 0, row_seed_key(row)))
        assert_outputs_equal(sample, expected)
        by_id[row["id"]] = sample
    # Two workers each read one shard: the samples are those of the serial pass, whatever the order.
    parallel = list(torch.utils.data.DataLoader(augmented, batch_size=None, num_workers=2))
    assert len(parallel) == len(by_id)
    for image, mask in parallel:
        assert any(torch.equal(image, s[0]) and torch.equal(mask, s[1]) for s in by_id.values())
    augmented.set_epoch(1)
    assert not torch.equal(next(iter(augmented))[0], by_id[next(iter(stream))["id"]][0])
    with pytest.raises(KeyError, match="'id' column"):
        next(iter(AugmentedDataset(labeled_dataset.to_iterable_dataset(), LabeledTransform(32))))
