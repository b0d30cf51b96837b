"""Band selection by number or GeoTIFF band description (one parser for `s5-segment --bands` and the data readers),
the dataset-wide band-layout check, and percentile clipping of the band statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.data.folders import LabeledFolder, raster_info, read_image
from s5_hf.data.images import BandSelectionError, DataFileError, parse_bands, resolve_bands
from s5_hf.data.synthetic import make_fake_labeled_folder, write_multiband_geotiff
from s5_hf.inference.scenes import SceneError, open_scene
from s5_hf.inference.sliding_window import _select_bands

rasterio = pytest.importorskip("rasterio")

NAMES = ("coastal", "Blue", "green", "red", "nir")


def described_geotiff(path, pixels, names=NAMES, nodata=None):
    write_multiband_geotiff(path, pixels, nodata=nodata)
    with rasterio.open(path, "r+") as dst:
        for band, name in enumerate(names, start=1):
            if name:
                dst.set_band_description(band, name)
    return path


def five_bands(size=8, seed=0):
    # Band b holds values 100 * (b + 1) + noise: which band came where is visible in the values.
    rng = np.random.default_rng(seed)
    return (np.arange(1, 6, dtype=np.uint16) * 100 + rng.integers(0, 10, (size, size, 5))).astype(np.uint16)


# ---- the parser ------------------------------------------------------------------------------------------------
def test_parse_bands_numbers_names_and_bad_items():
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands(" red, Green ,blue ") == ("red", "Green", "blue")
    assert parse_bands([4, "nir", "2"]) == (4, "nir", 2)
    assert parse_bands(None) is None
    for bad in ("1,,2", "0,1,2", "-1", ""):
        with pytest.raises(ValueError, match="--bands takes 1-based band numbers or band descriptions"):
            parse_bands(bad)


def test_resolve_bands_by_number_and_case_insensitive_description():
    assert resolve_bands("4,3,2", 5, NAMES) == [3, 2, 1]
    assert resolve_bands("RED,green,blue", 5, NAMES) == [3, 2, 1]
    assert resolve_bands("nir,1", 5, NAMES) == [4, 0]
    with pytest.raises(BandSelectionError, match=r"band\(s\) \[7\] do not exist; the image has 5 band\(s\): 1 \"coastal\""):
        resolve_bands("7", 5, NAMES)
    with pytest.raises(BandSelectionError, match=r"no band is described as 'swir'.*5 \"nir\""):
        resolve_bands("red,swir", 5, NAMES)
    with pytest.raises(BandSelectionError, match=r"bands \[1, 2\] are all described as 'red'"):
        resolve_bands("red", 2, ("red", "red"))
    with pytest.raises(BandSelectionError, match=r"2 \(no description\)"):
        resolve_bands("red", 2, ("blue", None))


# ---- the data readers ------------------------------------------------------------------------------------------
def test_read_image_selects_by_description_and_number(tmp_path):
    pixels = five_bands()
    path = described_geotiff(tmp_path / "a.tif", pixels)
    by_name, _ = read_image(path, bands="red,green,blue")
    by_number, _ = read_image(path, bands=[4, 3, 2])
    np.testing.assert_array_equal(by_name, pixels[..., [3, 2, 1]])
    np.testing.assert_array_equal(by_number, by_name)
    info = raster_info(path, bands="nir,red")
    assert (info.bands, info.dtype, info.descriptions) == (2, "uint16", ("nir", "red"))


def test_read_image_missing_description_names_file_band_and_available(tmp_path):
    path = described_geotiff(tmp_path / "scene_7.tif", five_bands())
    with pytest.raises(DataFileError, match=r"scene_7\.tif: no band is described as 'swir'; "
                                            r"the image's bands: 1 \"coastal\", 2 \"Blue\".*5 \"nir\""):
        read_image(path, bands="red,swir")
    with pytest.raises(DataFileError, match=r"scene_7\.tif: band\(s\) \[9\] do not exist"):
        raster_info(path, bands="9")


def test_png_bands_have_their_color_names(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    pixels, _ = read_image(tmp_path / "a.png", bands="blue,green,red")
    np.testing.assert_array_equal(pixels, rgb[..., ::-1])
    assert raster_info(tmp_path / "a.png", bands="red").bands == 1


def test_labeled_folder_selects_bands_by_description_per_file(tmp_path):
    # Two files whose bands are stored in different orders: selection by description finds each file's own.
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pixels = five_bands()
    described_geotiff(root / "images" / "a.tif", pixels)
    described_geotiff(root / "images" / "b.tif", pixels[..., ::-1], names=NAMES[::-1])
    for stem in ("a", "b"):
        write_multiband_geotiff(root / "masks" / f"{stem}.tif", np.zeros((8, 8, 1), np.uint8))
    (root / "id2label.json").write_text(json.dumps({"0": "x", "1": "y"}))
    folder = LabeledFolder(root, "mine", bands="red,green,blue")
    assert (folder.check().bands, folder.check().dtype) == (3, "uint16")
    rows = {row["id"]: np.asarray(row["image"]) for row in folder.load("train")}
    np.testing.assert_array_equal(rows["a"], pixels[..., [3, 2, 1]])
    np.testing.assert_array_equal(rows["b"], rows["a"])
    # A file without the asked description is named by the dataset check, before any training.
    described_geotiff(root / "images" / "b.tif", pixels, names=("a", "b", "c", "d", "e"))
    with pytest.raises(DataFileError, match=r"b\.tif: no band is described as 'red'"):
        LabeledFolder(root, "mine", bands="red,green,blue").check()


def test_mixed_band_counts_and_dtypes_name_the_first_disagreeing_file(tmp_path):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=3, size=16, bands=4, dtype="uint16")
    pixels = np.full((16, 16, 5), 300, np.uint16)
    write_multiband_geotiff(root / "images" / "tile_001.tif", pixels)
    with pytest.raises(DataFileError, match=r"tile_001\.tif: 5 band\(s\) of uint16, but .*tile_000\.tif has 4"):
        LabeledFolder(root).check()
    write_multiband_geotiff(root / "images" / "tile_001.tif", pixels[..., :4].astype(np.float32))
    with pytest.raises(DataFileError, match=r"tile_001\.tif: 4 band\(s\) of float32, but .*tile_000\.tif has 4 "
                                            r"of uint16"):
        LabeledFolder(root).check()
    # Selecting the common bands by number makes the 5-band file fit.
    write_multiband_geotiff(root / "images" / "tile_001.tif", pixels)
    assert LabeledFolder(root, bands="1,2,3,4").check().bands == 4


# ---- s5-segment ------------------------------------------------------------------------------------------------
def test_scene_band_selection_by_description(tmp_path):
    path = described_geotiff(tmp_path / "s.tif", five_bands())
    scene = open_scene(path)
    try:
        assert _select_bands(scene, "red,green,blue", 3) == [3, 2, 1]
        assert _select_bands(scene, (4, 3, 2), 3) == [3, 2, 1]
        with pytest.raises(SceneError, match=r"s\.tif: no band is described as 'swir'"):
            _select_bands(scene, "red,swir,blue", 3)
        with pytest.raises(SceneError, match=r"s\.tif: has 5 band\(s\) but the model expects 3 \(the scene's bands: 1 \"coastal\""):
            _select_bands(scene, None, 3)
    finally:
        scene.close()


def test_segment_cli_accepts_band_names(tmp_path, one_thread):
    from s5_hf.inference.cli import build_parser, main

    assert build_parser().parse_args(["x.tif", "--model", "m", "--bands", "red,green,blue"]).bands == (
        "red", "green", "blue")
    tiny = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 32,
            "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16}
    torch.manual_seed(0)
    model = S5ForSemanticSegmentation(S5Config(**tiny, tasks=["potsdam"]))
    model.save_pretrained(tmp_path / "model")
    from s5_hf.image_processing_s5 import S5ImageProcessor

    S5ImageProcessor(do_rescale=False, image_mean=[300.0] * 3, image_std=[100.0] * 3,
                     input_dtype="uint16").save_pretrained(tmp_path / "model")
    path = described_geotiff(tmp_path / "s.tif", five_bands(32))
    assert main([str(path), str(tmp_path / "a.tif"), "--model", str(tmp_path / "model"), "--bands",
                 "red,green,blue", "--window", "32", "--no-progress"]) == 0
    assert main([str(path), str(tmp_path / "b.tif"), "--model", str(tmp_path / "model"), "--bands", "4,3,2",
                 "--window", "32", "--no-progress"]) == 0
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert main([str(path), str(tmp_path / "c.tif"), "--model", str(tmp_path / "model"), "--bands",
                 "red,swir,blue", "--window", "32", "--no-progress"]) == 1
    assert not (tmp_path / "c.tif").exists()


# ---- percentile clipping ---------------------------------------------------------------------------------------
def sixteen_bit_tiles(count=6, size=24, bands=3, seed=0):
    # Reflectance-like values with a few saturated pixels per tile: the case percentile clipping is for.
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        tile = rng.normal(1500, 400, (size, size, bands)).clip(0, 65535).astype(np.uint16)
        tile[rng.integers(0, size, 3), rng.integers(0, size, 3)] = 65535
        tiles.append(tile)
    return tiles


def test_percentiles_are_exact_for_integers_and_moments_are_of_clipped_values():
    from s5_hf.data.band_stats import compute_band_stats

    tiles = sixteen_bit_tiles()
    valid = [np.ones(t.shape[:2], bool) for t in tiles]
    valid[0][:, :5] = False  # nodata is left out of the percentiles too
    stats = compute_band_stats(zip(tiles, valid), percentiles=(2, 98))
    values = np.concatenate([t[v] for t, v in zip(tiles, valid)]).astype(np.float64)
    np.testing.assert_array_equal(stats.clip_min, np.percentile(values, 2, axis=0, method="inverted_cdf"))
    np.testing.assert_array_equal(stats.clip_max, np.percentile(values, 98, axis=0, method="inverted_cdf"))
    clipped = np.clip(values, stats.clip_min, stats.clip_max)
    np.testing.assert_allclose(stats.mean, clipped.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, clipped.std(axis=0), rtol=1e-9)
    assert max(stats.clip_max) < 65535 and stats.percentiles == (2.0, 98.0)
    plain = compute_band_stats(zip(tiles, valid))
    assert plain.clip_min is None and plain.std[0] > stats.std[0]  # the saturated pixels stretch the plain std


def test_float_percentiles_within_one_bin_and_memory_is_flat():
    from s5_hf.data.band_stats import FLOAT_BINS, BandHistogram, compute_band_stats

    rng = np.random.default_rng(1)
    # Later tiles extend the range both ways: the histogram grows by merging bins, never by re-estimating.
    tiles = [rng.normal(0.1 * k, 0.05 * (abs(k) + 1), (16, 16, 2)).astype(np.float32) for k in (0, 3, -4, 8)]
    stats = compute_band_stats(tiles, percentiles=(2, 98))
    values = np.concatenate([t.reshape(-1, 2) for t in tiles]).astype(np.float64)
    span = values.max() - values.min()
    # Within the bin of the order statistic that reaches the share; doubling keeps the bins below 4 * span / bins.
    tolerance = 4 * span / FLOAT_BINS
    for q, got in ((2, stats.clip_min), (98, stats.clip_max)):
        np.testing.assert_allclose(got, np.percentile(values, q, axis=0, method="inverted_cdf"), atol=tolerance)
    histogram = BandHistogram(2, np.float32)
    for tile in tiles * 5:
        histogram.add(tile.reshape(-1, 2))
    assert histogram.counts.shape == (2, FLOAT_BINS) and histogram.counts.sum() == 5 * values.size
    assert BandHistogram(13, np.uint16).counts.shape == (13, 65536)


def test_clip_settings_round_trip_through_preprocessor_config(tmp_path):
    from transformers import AutoImageProcessor

    import s5_hf  # noqa: F401  (registers the Auto classes)
    from s5_hf.data.band_stats import compute_band_stats, processor_from_band_stats
    from s5_hf.image_processing_s5 import S5ImageProcessor

    stats = compute_band_stats(sixteen_bit_tiles(), percentiles=(2, 98))
    processor = processor_from_band_stats(stats, do_resize=False)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["do_clip"] is True
    assert saved["clip_min"] == list(stats.clip_min) and saved["clip_max"] == list(stats.clip_max)
    for reloaded in (S5ImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert reloaded.do_clip and list(reloaded.clip_min) == list(stats.clip_min)
        assert list(reloaded.clip_max) == list(stats.clip_max)
        image = sixteen_bit_tiles(1, seed=5)[0]
        np.testing.assert_array_equal(reloaded(image, return_tensors="np")["pixel_values"],
                                      processor(image, return_tensors="np")["pixel_values"])
    with pytest.raises(ValueError, match="clip_min .* must not exceed clip_max"):
        S5ImageProcessor(do_clip=True, clip_min=[5.0, 5.0, 5.0], clip_max=[1.0, 9.0, 9.0])


def test_training_transform_processor_and_sliding_window_clip_identically():
    from s5_hf.data.band_stats import RawUnitsTransform, compute_band_stats, processor_from_band_stats
    from s5_hf.inference.sliding_window import Normalization
    from s5_hf.training.augment import LabeledTransform

    stats = compute_band_stats(sixteen_bit_tiles(), percentiles=(2, 98))
    processor = processor_from_band_stats(stats, do_resize=False)
    image = sixteen_bit_tiles(1, size=32, seed=7)[0]
    mask = np.zeros((32, 32), np.uint8)
    mask[:4, :3] = 1  # in one corner: tells which flips the augmentation made
    expected = processor(image, return_tensors="np")["pixel_values"][0]
    # Identity geometry (scale 1, crop = the image); only flips may happen, undone here as the mask shows them.
    transform = RawUnitsTransform(LabeledTransform(32, (1.0, 1.0), mean=stats.mean, std=stats.std),
                                  processor=processor)
    for seed in range(4):
        got, got_mask = transform({"image": image, "mask": mask}, generator=torch.Generator().manual_seed(seed))
        got, got_mask = got.numpy(), got_mask.numpy()
        if got_mask[0, -1] == 1 or got_mask[-1, -1] == 1:
            got, got_mask = got[..., ::-1], got_mask[..., ::-1]
        if got_mask[-1, 0] == 1:
            got, got_mask = got[:, ::-1], got_mask[::-1]
        np.testing.assert_array_equal(got_mask, mask)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    window = Normalization.from_processor(processor)(np.moveaxis(image, -1, 0)).numpy()
    np.testing.assert_allclose(window, expected, rtol=1e-5, atol=1e-5)
    # Without the processor's clipping the training image would differ where pixels saturate.
    unclipped, _ = RawUnitsTransform(LabeledTransform(32, (1.0, 1.0), mean=stats.mean, std=stats.std))(
        {"image": image, "mask": mask}, generator=torch.Generator().manual_seed(0))
    assert np.abs(unclipped.numpy()).max() > np.abs(expected).max() + 1


# ---- evaluation and RS4P scoring of a model of other bands -----------------------------------------------------
TINY4 = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 32,
         "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16, "num_channels": 4}
TASK = {"name": "fields", "id2label": {0: "soil", 1: "crop", 2: "water"}, "ignore_index": 255}


def four_band_model_and_processor(tmp_path):
    from s5_hf.data.band_stats import compute_band_stats, processor_from_band_stats

    torch.manual_seed(0)
    model = S5ForSemanticSegmentation(S5Config(**TINY4, tasks=[TASK])).eval()
    root = make_fake_labeled_folder(tmp_path / "d", num_images=3, size=64, bands=4, dtype="uint16",
                                    num_classes=3, nodata=0, nodata_border=3)
    folder = LabeledFolder(root, "fields")
    stats = compute_band_stats(folder.iter_images("train"), percentiles=(2, 98))
    return model, processor_from_band_stats(stats), folder


def test_evaluation_takes_the_models_bands_through_the_saved_processor(tmp_path, one_thread):
    from s5_hf.evaluation.protocols import EvalProtocol, evaluate_task, predict_labels
    from s5_hf.inference.sliding_window import segment_scene

    model, processor, folder = four_band_model_and_processor(tmp_path)
    rows = list(folder.load("train"))
    for protocol in (EvalProtocol("slide", flip=True), EvalProtocol("resize")):
        result = evaluate_task(model, rows, "fields", crop_size=32, protocol=protocol, processor=processor)
        assert result.num_samples == 3 and 0.0 <= result.scores.overall_accuracy <= 1.0
        assert result.confusion.matrix.sum() == sum(int((r["mask"] != 255).sum()) for r in rows)
    image = np.asarray(rows[0]["image"])
    # Sliding-window evaluation predicts exactly as s5-segment does with the same processor.
    np.testing.assert_array_equal(
        predict_labels(model, image, "fields", EvalProtocol("slide"), 32, processor),
        segment_scene(model, image, "fields", processor=processor, window=32))
    # Resize mode: normalize-then-resize in float is the processor's clip-resize-normalize.
    pixels = processor(image, size={"height": 32, "width": 32}, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixels, task="fields").logits
    expected = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear",
                                               align_corners=False).argmax(1)[0].numpy()
    got = predict_labels(model, image, "fields", EvalProtocol("resize"), 32, processor)
    assert (got == expected).mean() > 0.99


def test_evaluation_refuses_band_count_mismatches(tmp_path):
    from s5_hf.evaluation.protocols import evaluate_task

    model, processor, folder = four_band_model_and_processor(tmp_path)
    rows = list(folder.load("train"))
    with pytest.raises(ValueError, match=r"model takes 4 band\(s\) but the processor normalizes 3.*saved with"):
        evaluate_task(model, rows, "fields", crop_size=32)  # the default RGB processor
    rgb = [{**rows[0], "image": np.zeros((64, 64, 3), np.uint16)}]
    with pytest.raises(ValueError, match=r"fields: sample 'tile_000': has 3 band\(s\) but the model takes 4"):
        evaluate_task(model, rgb, "fields", crop_size=32, processor=processor)
    eight_bit = [{**rows[0], "image": np.asarray(rows[0]["image"]).astype(np.uint8)}]
    with pytest.raises(ValueError, match=r"holds uint8 values but .* computed on uint16"):
        evaluate_task(model, eight_bit, "fields", crop_size=32, processor=processor)


def test_rs4p_scoring_of_a_four_band_model(tmp_path, one_thread):
    from PIL import Image

    from s5_hf.rs4p import ChunkScorer, RawImage, ScoringOptions

    model, processor, folder = four_band_model_and_processor(tmp_path)
    tiles = [pair.image.read_bytes() for pair in folder.pairs("train")]
    png = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png)
    images = [RawImage(f"t{i}", "pool", data) for i, data in enumerate(tiles)] + [
        RawImage("rgb", "pool", png.read_bytes())]
    options = ScoringOptions(image_size=64, batch_size=2, background_id=None)
    table = ChunkScorer(model, options, processor=processor).score(images).to_pylist()
    assert [r["error"] for r in table[:3]] == [None] * 3
    assert table[3]["error"] == "3 band(s) but the model takes 4"
    assert all(sum(r["class_counts"]) == 64 * 64 for r in table[:3])
    # The features are those of the processor-normalized tile.
    pixels = processor(np.asarray(list(folder.load("train"))[0]["image"]), do_resize=False,
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.base_model(pixels, task="fields").pooler_output[0]
    feature = np.asarray(table[0]["feature"], dtype=np.float32)
    np.testing.assert_allclose(feature, (pooled / pooled.norm()).numpy(), atol=2e-3)
    with pytest.raises(ValueError, match=r"model takes 4 bands: pass the image processor saved with it"):
        ChunkScorer(model, options)
    from s5_hf.image_processing_s5 import S5ImageProcessor

    with pytest.raises(ValueError, match=r"model takes 4 band\(s\) but the processor normalizes 3"):
        ChunkScorer(model, options, processor=S5ImageProcessor())


# ---- the demo on a model of more than three bands --------------------------------------------------------------
def load_demo_app():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("s5_demo_app_bands", Path(__file__).resolve().parents[1] / "demo"
                                                  / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_shows_a_chosen_rgb_composite_of_a_four_band_model(tmp_path, one_thread):
    app = load_demo_app()
    model, processor, folder = four_band_model_and_processor(tmp_path)
    model.config.band_adaptation = {"from_channels": 3, "rgb_bands": [2, 1, 0], "extra_init": "mean_rgb",
                                    "scale": 0.75}
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    pair = folder.pairs("train")[0]
    pixels, invalid = read_image(pair.image)
    shown, table = app.predict(pair.image.read_bytes(), "fields", str(tmp_path / "model"), alpha=0.0)
    # Opacity 0: the left part is the composite, bands 3, 2, 1 (the config's rgb_bands), stretched to the clip bounds.
    expected = app.display_rgb(pixels, [2, 1, 0], processor.clip_min, processor.clip_max)
    np.testing.assert_array_equal(np.asarray(shown)[:64, :64], np.asarray(expected))
    chosen, _ = app.predict(pair.image.read_bytes(), "fields", str(tmp_path / "model"), alpha=0.0, rgb_bands="4,3,2")
    np.testing.assert_array_equal(np.asarray(chosen)[:64, :64],
                                  np.asarray(app.display_rgb(pixels, [3, 2, 1], processor.clip_min,
                                                             processor.clip_max)))
    assert "share" in table and "%" in table
    # Nodata columns (the GeoTIFF's declared nodata) are not counted in the shares.
    labels_share = sum(float(v) for v in __import__("re").findall(r"([\d.]+) % \|", table))
    assert abs(labels_share - 100.0) < 0.5
    with pytest.raises(ValueError, match=r"RGB composite: band\(s\) \[9\] do not exist"):
        app.predict(pair.image.read_bytes(), "fields", str(tmp_path / "model"), rgb_bands="9,3,2")
    with pytest.raises(ValueError, match=r"RGB composite: choose 3 bands"):
        app.predict(pair.image.read_bytes(), "fields", str(tmp_path / "model"), rgb_bands="4,3")
    from PIL import Image

    with pytest.raises(ValueError, match=r"This model takes 4 band\(s\) but the image has 3; upload a GeoTIFF"):
        app.predict(Image.new("RGB", (64, 64)), "fields", str(tmp_path / "model"))
    with pytest.raises(ValueError, match="not a readable GeoTIFF"):
        app.predict(b"not a tiff", "fields", str(tmp_path / "model"))


def test_rgb_geotiff_without_descriptions_selects_by_color_interpretation(tmp_path):
    # A plain RGB GeoTIFF (photometric RGB: GDAL reports red/green/blue colour interpretation, no descriptions).
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    from rasterio.transform import Affine

    with rasterio.open(tmp_path / "rgb.tif", "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       photometric="RGB", crs="EPSG:32617", transform=Affine(1.0, 0, 500000.0, 0, -1.0, 0)) as dst:
        dst.write(pixels.transpose(2, 0, 1))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif", bands="blue,green,red")[0], pixels[..., ::-1])
    scene = open_scene(tmp_path / "rgb.tif")
    try:
        assert _select_bands(scene, "blue,green,red", 3) == [2, 1, 0]
    finally:
        scene.close()
