"""S4P on data that is not 8-bit RGB: the band-wise strong augmentation, nodata in the unlabeled stream, and a tiny
run on 4-band uint16 folders/shards whose saved processor holds the labeled data's band statistics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from s5_hf import S5ForSemanticSegmentation, S5ImageProcessor
from s5_hf.data.band_stats import compute_band_stats
from s5_hf.data.folders import DataFileError, LabeledFolder
from s5_hf.data.normalization import data_normalization, nodata_fill
from s5_hf.data.streams import DataSource
from s5_hf.data.synthetic import make_fake_labeled_folder
from s5_hf.training.augment import (
    UnlabeledTransform, band_jitter, sample_generator, strong_augment, strong_augment_bands,
)
from s5_hf.training.losses import fixmatch_unlabeled_loss
from s5_hf.training.s4p import valid_pixels

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
        "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16, "drop_path_rate": 0.0}


def raw_image(bands=5, size=24, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return (20 + 200 * torch.rand(bands, size, size, generator=generator)).round().to(dtype)
    return (1000 + 3000 * torch.rand(bands, size, size, generator=generator)).to(dtype)


def applied_generator(seed_from=0):
    """A generator seed for which band_jitter applies (its first draw is below p=0.8)."""
    for seed in range(seed_from, seed_from + 50):
        if torch.rand((), generator=torch.Generator().manual_seed(seed)).item() < 0.8:
            return seed
    raise AssertionError("no seed applies the jitter")


# ---- band-wise strong augmentation --------------------------------------------------------------------------------
def test_band_jitter_is_one_affine_map_per_band_with_one_scale_in_raw_units():
    image = raw_image(bands=6)
    seed = applied_generator()
    out = band_jitter(image, torch.Generator().manual_seed(seed))
    assert out.dtype == image.dtype and torch.isfinite(out).all() and not torch.equal(out, image)
    # Brightness (x * b) and contrast (c * x + (1 - c) * band mean), in either order: per band out = s * x + t_band,
    # with the same s = b * c for every band; nothing mixes bands (no hue, saturation or grayscale).
    x, y = image.double().flatten(1), out.double().flatten(1)
    scales = []
    for band in range(6):
        design = torch.stack([x[band], torch.ones_like(x[band])], dim=1)
        solution = torch.linalg.lstsq(design, y[band][:, None]).solution[:, 0]
        fitted = design @ solution
        assert torch.allclose(fitted, y[band], atol=1e-3 * float(y[band].abs().max())), band
        scales.append(float(solution[0]))
    assert max(scales) - min(scales) < 1e-4 and 0.25 <= scales[0] <= 2.25 and abs(scales[0] - 1) > 1e-6
    # Raw units: values are not clamped to [0, 1] as the RGB jitter's are.
    assert float(out.max()) > 1.5


def test_band_jitter_keeps_nodata_pixels_and_uint8_range():
    image = raw_image(bands=4)
    valid = torch.ones(24, 24, dtype=torch.bool)
    valid[:, :5] = False
    image[:, ~valid] = 0.0
    seed = applied_generator()
    out = band_jitter(image, torch.Generator().manual_seed(seed), valid=valid)
    assert torch.equal(out[:, ~valid], image[:, ~valid]) and not torch.equal(out[:, valid], image[:, valid])
    # Contrast blends with the means of the valid pixels: an all-nodata window is returned as it is.
    assert torch.equal(band_jitter(image, torch.Generator().manual_seed(seed), valid=torch.zeros_like(valid)), image)
    out8 = band_jitter(raw_image(bands=4, dtype=torch.uint8), torch.Generator().manual_seed(seed), brightness=3.0)
    assert out8.dtype == torch.uint8 and int(out8.max()) <= 255  # rounded and clipped, not wrapped around


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_strong_augment_bands_is_deterministic_finite_and_keeps_the_dtype(dtype):
    image = raw_image(bands=4, dtype=dtype)
    outputs = [strong_augment_bands(image, sample_generator(7, key)) for key in (3, 3, 4)]
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])
    for out in outputs:
        assert out.dtype == dtype and out.shape == image.shape and torch.isfinite(out.float()).all()
    # The RGB strong augmentation would clamp raw units to [0, 1]; the band-wise one keeps their scale.
    if dtype == torch.float32:
        rgb = strong_augment(image, torch.Generator().manual_seed(applied_generator()))
        assert float(outputs[0].mean()) > 100 and float(rgb[:3].max()) <= 1


def test_unlabeled_transform_marks_nodata_and_uses_the_band_augmentation():
    image = np.asarray(raw_image(bands=4).permute(1, 2, 0))
    image[:, :8] = 0
    row = {"image": image, "valid": ~(image == 0).all(axis=2), "id": "x"}
    transform = UnlabeledTransform(24, (1.0, 1.0), mean=[2000.0] * 4, std=[800.0] * 4, photometric="bands")
    weak, strong1, strong2, ignore, _, _ = transform(row, generator=sample_generator(1))
    nodata = torch.from_numpy(~row["valid"])
    assert ignore.shape == (24, 24) and (ignore == 255).sum() == nodata.sum()
    assert all(torch.isfinite(v).all() and v.abs().max() < 10 for v in (weak, strong1, strong2))  # normalized
    # Without a valid column the ignore mask is the padding only (the RGB path's behaviour).
    _, _, _, ignore, _, _ = transform({"image": image, "id": "x"}, generator=sample_generator(1))
    assert (ignore == 0).all()
    with pytest.raises(ValueError, match="photometric must be 'rgb' or 'bands'"):
        UnlabeledTransform(24, photometric="hsv")


def test_a_nodata_only_window_adds_nothing_to_the_unlabeled_loss(tmp_path):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=2, size=32, bands=4, dtype="uint16", nodata=0,
                                    nodata_border=8)
    source = DataSource.parse(f"fields={root}")
    norm = data_normalization({"fields": source}, {"fields": "train"}, num_channels=4)
    transform = norm.unlabeled_transform(32, (1.0, 1.0), cutmix_p=0.0, nodata=nodata_fill(source))
    tile = np.asarray(next(iter(source.folder().load("train", images_only=True)))["image"])
    empty = {"image": np.zeros_like(tile), "id": "empty"}  # nothing but nodata: no `valid` column, found by value
    samples = [transform(row, generator=sample_generator(0, i)) for i, row in enumerate([empty, {"image": tile,
                                                                                                 "id": "tile"}])]
    ignore = torch.stack([s[3] for s in samples])
    assert (ignore[0] == 255).all() and (ignore[1] == 255).sum() == 32 * 8
    assert valid_pixels(ignore, None) == 32 * 24
    logits = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    pseudo = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    confidence = torch.ones(2, 32, 32)
    loss, _ = fixmatch_unlabeled_loss(logits, pseudo, confidence, ignore, threshold=0.5)
    changed = logits.clone()
    changed[0] = 50 * torch.randn(4, 32, 32)
    assert torch.equal(loss, fixmatch_unlabeled_loss(changed, pseudo, confidence, ignore, threshold=0.5)[0])
    # ... while the tile's valid pixels do count.
    changed[1] += torch.randn(4, 32, 32)
    assert not torch.equal(loss, fixmatch_unlabeled_loss(changed, pseudo, confidence, ignore, threshold=0.5)[0])


# ---- a tiny S4P run ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unlabeled_kind", ["folder", "images", "shards"])
def test_s4p_on_four_band_uint16_folders_saves_the_band_statistics(tmp_path, unlabeled_kind):
    from s5_hf.data.shards import folder_to_shards
    from s5_hf.training import s4p

    labeled = make_fake_labeled_folder(tmp_path / "labeled", num_images=6, size=64, bands=4, dtype="uint16",
                                       nodata=0, nodata_border=8, layout="splits")
    unlabeled = make_fake_labeled_folder(tmp_path / "pool", num_images=4, size=64, bands=4, dtype="uint16",
                                         nodata=0, nodata_border=16, seed=5)
    (unlabeled / "id2label.json").unlink()  # an unlabeled folder needs no classes: its masks are not read
    location = unlabeled
    if unlabeled_kind == "images":  # an unlabeled pool as it usually comes: images/ without masks/
        shutil.rmtree(unlabeled / "masks")
    if unlabeled_kind == "shards":
        location = tmp_path / "pool_shards"
        folder_to_shards(LabeledFolder(unlabeled, "pool", id2label={0: "a", 1: "b", 2: "c", 3: "d"}), location)
    out = tmp_path / "run"
    outcome = s4p.main(["--labeled", f"fields={labeled}", "--unlabeled", f"pool={location}", "--output_dir", str(out),
                        "--config_overrides", json.dumps({**TINY, "num_channels": 4}), "--crop_size", "64",
                        "--batch_size", "2", "--max_train_steps", "2", "--eval_steps", "0", "--logging_steps", "1",
                        "--shuffle_buffer", "0", "--ratio_range", "1", "1", "--max_eval_samples", "1"])
    # Evaluated at the end on the val split through the band-statistics processor (4 bands of uint16).
    result = outcome["results"]["fields"]
    assert result.split == "val" and result.num_samples == 1 and 0 <= result.scores.mean_iou <= 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["loss_x"], r["loss_u"]) for r in records if "loss_u" in r]
    assert len(losses) == 2 and np.isfinite(losses).all()
    # The crops are the whole tiles (ratio 1): the unlabeled ones have 16 of 64 columns nodata, the labeled 8.
    shares = [(r["valid_share_labeled"], r["valid_share_unlabeled"]) for r in records if "valid_share_unlabeled" in r]
    assert shares == [(0.875, 0.75)] * 2
    processor = S5ImageProcessor.from_pretrained(out / "model")
    expected = compute_band_stats(LabeledFolder(labeled, "fields").iter_images("train"))
    assert processor.do_rescale is False and processor.input_dtype == "uint16"
    np.testing.assert_allclose(processor.image_mean, expected.mean)
    np.testing.assert_allclose(processor.image_std, expected.std)
    model = S5ForSemanticSegmentation.from_pretrained(out / "model").eval()
    assert model.config.num_channels == 4 and model.config.task_names == ["fields"]
    tile = np.asarray(next(iter(LabeledFolder(labeled, "fields").load("train")))["image"])
    with torch.no_grad():
        logits = model(processor(tile, return_tensors="pt")["pixel_values"]).logits
    assert logits.shape[:2] == (1, 4) and torch.isfinite(logits).all()


def test_s4p_refuses_unlabeled_data_of_another_band_layout(tmp_path):
    from s5_hf.training import s4p

    labeled = make_fake_labeled_folder(tmp_path / "labeled", num_images=2, size=32, bands=4, dtype="uint16")
    pool = make_fake_labeled_folder(tmp_path / "pool", num_images=2, size=32, image_format="png")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"one band layout .*\(4, 'uint16'\).*\(3, 'uint8'\)"):
        s4p.main(["--labeled", f"fields={labeled}", "--unlabeled", f"pool={pool}", "--output_dir", str(out),
                  "--config_overrides", json.dumps({**TINY, "num_channels": 4}), "--crop_size", "32",
                  "--max_train_steps", "1"])
    assert not out.exists()
    with pytest.raises(ValueError, match="--nodata: 'zero' is not a number"):
        s4p.parse_args(["--labeled", f"fields={labeled}", "--unlabeled", f"pool={pool}", "--output_dir", str(out),
                        "--nodata", "zero"])


def test_a_folder_of_images_without_masks_is_refused_as_labeled_data(tmp_path):
    from s5_hf.data.streams import DataSource
    from s5_hf.training import s4p

    pool = make_fake_labeled_folder(tmp_path / "pool", num_images=2, size=32, bands=4, dtype="uint16")
    shutil.rmtree(pool / "masks")
    with pytest.raises(ValueError, match=r"pool=.*has no mask: a folder of images/ without masks/ is unlabeled data"):
        DataSource("pool", str(pool)).task()
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="is unlabeled data"):
        s4p.main(["--labeled", f"pool={pool}", "--unlabeled", f"pool={pool}", "--output_dir", str(out),
                  "--config_overrides", json.dumps({**TINY, "num_channels": 4}), "--crop_size", "32",
                  "--max_train_steps", "1"])
    assert not out.exists()  # refused before the run folder is made
    with pytest.raises(DataFileError, match="no mask: .* usable only as unlabeled data"):
        next(iter(LabeledFolder(pool, "pool", id2label={0: "a"}).load("train")))
