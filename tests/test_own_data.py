"""A user's own labeled data: folders/CSV of image/mask pairs (any bands, dtype, nodata), custom classes through
`--labels`, fine-tuning an S4P model on a new task name, and the bad inputs, each naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.data.folders import LabeledFolder, read_image
from s5_hf.data.images import DataFileError
from s5_hf.data.streams import DataSource
from s5_hf.data.synthetic import make_fake_labeled_folder, write_multiband_geotiff

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
        "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16, "drop_path_rate": 0.0}


def load_script(name: str):
    """The module of a training program (`training/<name>.py` is a thin entry point over it)."""
    import importlib

    return importlib.import_module({"finetune_mdf": "s5_hf.training.mdf", "pretrain_s4p": "s5_hf.training.s4p"}[name])


def rows(folder: LabeledFolder, split: str = "train") -> list[dict]:
    return list(folder.load(split))


# ---- layouts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bands,dtype", [(4, "uint16"), (11, "int16"), (13, "float32"), (3, "uint8")])
def test_geotiff_folder_any_bands_and_dtype_with_nodata_border(tmp_path, bands, dtype):
    nodata = -9999.0 if dtype in ("int16", "float32") else 0
    root = make_fake_labeled_folder(tmp_path / "d", num_images=3, size=32, bands=bands, dtype=dtype,
                                    nodata=nodata, nodata_border=4)
    folder = LabeledFolder(root, "mine")
    info = folder.check()
    assert (info.bands, info.dtype) == (bands, dtype)
    for row in rows(folder):
        image = np.asarray(row["image"])
        assert image.shape == (32, 32, bands) and image.dtype == np.dtype(dtype)
        # The border is nodata in the image and class 0 in the mask file: it must come out ignored, not class 0.
        assert (row["mask"][:, :4] == 255).all()
        assert (row["mask"][:, 4:] < 4).all()


def test_nodata_option_overrides_and_nan_nodata_is_filled(tmp_path):
    pixels = np.full((16, 16, 2), 0.5, np.float32)
    pixels[:3] = np.nan
    write_multiband_geotiff(tmp_path / "a.tif", pixels)  # no declared nodata
    with pytest.raises(DataFileError, match=r"a\.tif: 96 NaN/Inf values .*--nodata nan"):
        read_image(tmp_path / "a.tif")
    image, invalid = read_image(tmp_path / "a.tif", nodata=float("nan"))
    assert invalid[:3].all() and not invalid[3:].any() and np.isfinite(image).all()


def test_rgba_png_alpha_is_nodata(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rgba = np.full((8, 8, 4), 200, np.uint8)
    rgba[:, :2, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "images" / "x.png")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "masks" / "x.png")
    row = rows(LabeledFolder(tmp_path, id2label={0: "a", 1: "b"}))[0]
    assert row["image"].mode == "RGB"
    assert (row["mask"][:, :2] == 255).all() and (row["mask"][:, 2:] == 1).all()


@pytest.mark.parametrize("layout", ["splits", "csv"])
def test_split_folders_and_csv(tmp_path, layout):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=6, size=32, layout=layout, image_format="png")
    source = DataSource.parse(f"mine={root}")
    assert source.kind == "folder"
    folder = source.folder()
    counts = {split: len(pairs) for split, pairs in folder.splits.items()}
    assert counts == ({"train": 4, "val": 2} if layout == "splits" else {"train": 6})
    if layout == "csv":
        assert DataSource.parse(f"mine={root / 'pairs.csv'}").kind == "folder"
    ids = {row["id"] for row in source.load("train")}
    assert len(ids) == counts["train"]


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=8, size=32, image_format="png")
    first = LabeledFolder(root, validation_split=0.25, split_seed=3)
    again = LabeledFolder(root, validation_split=0.25, split_seed=3)
    val = {p.id for p in first.splits["val"]}
    assert len(val) == 2 and val == {p.id for p in again.splits["val"]}
    assert not val & {p.id for p in first.splits["train"]}
    assert len(first.splits["train"]) == 6
    with pytest.raises(ValueError, match=r"no split 'val'.*--validation_split"):
        LabeledFolder(root).pairs("val")


# ---- classes ------------------------------------------------------------------------------------------------------
def test_task_from_labels_or_folder_or_card(tmp_path):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=2, size=32, image_format="png", num_classes=3)
    task = DataSource.parse(f"mycrops={root}").task()
    assert task.to_dict() == {"name": "mycrops", "id2label": {0: "class_0", 1: "class_1", 2: "class_2"}, "ignore_index": 255}
    (root / "id2label.json").unlink()
    with pytest.raises(ValueError, match="classes are unknown: pass --labels mycrops=id2label.json"):
        DataSource.parse(f"mycrops={root}").task()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "x.parquet").write_bytes(b"")
    (shards / "README.md").write_text("---\nid2label:\n  0: soil\n  1: crop\n---\n# card\n")
    assert DataSource.parse(f"fields={shards}").task().id2label == {0: "soil", 1: "crop"}
    assert DataSource.parse(f"potsdam={shards}").task().name == "potsdam"
    (shards / "id2label.json").write_text(json.dumps({"0": "bare", "1": "green"}))  # preferred over the card
    assert DataSource.parse(f"fields={shards}").task().id2label == {0: "bare", 1: "green"}


def test_mask_geotiff_nodata_is_ignored(tmp_path):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=1, size=16, bands=2, dtype="float32")
    mask = np.full((16, 16, 1), 1, np.uint8)
    mask[:4] = 99  # the mask's own declared nodata: not a class, must become the ignore index
    (root / "masks" / "tile_000.png").unlink()
    write_multiband_geotiff(root / "masks" / "tile_000.tif", mask, nodata=99)
    row = rows(LabeledFolder(root))[0]
    assert (row["mask"][:4] == 255).all() and (row["mask"][4:] == 1).all()


def finetune_args(root: Path, out: Path, start: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(start), "--train_datasets", f"mycrops={root}", "--output_dir", str(out),
            "--crop_size", "64", "--batch_size", "2", "--max_train_steps", "2", "--eval_steps", "0",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--part_features", "8", *extra]


@pytest.fixture(scope="module")
def s4p_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("s4p") / "model"
    S5ForSemanticSegmentation(S5Config(**TINY, tasks=["isaid"])).save_pretrained(folder)
    return folder


def test_finetune_a_new_task_from_s4p_with_labels(tmp_path, s4p_model):
    finetune = load_script("finetune_mdf")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=6, size=64, image_format="png", num_classes=3)
    (root / "id2label.json").unlink()
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "soil", "1": "wheat", "2": "maize"}))
    out = tmp_path / "run"
    outcome = finetune.main(finetune_args(root, out, s4p_model, "--labels", f"mycrops={labels}",
                                          "--validation_split", "0.34", "--max_eval_samples", "2"))
    model = S5ForSemanticSegmentation.from_pretrained(out / "model")
    assert model.config.task_names == ["mycrops"]
    assert model.config.tasks[0].id2label == {0: "soil", 1: "wheat", 2: "maize"}
    assert outcome["results"]["mycrops"].split == "val"


def test_decoder_is_copied_and_classifier_new_for_a_new_task(tmp_path, s4p_model):
    finetune = load_script("finetune_mdf")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=2, size=64, image_format="png", num_classes=3)
    args = finetune.parse_args(finetune_args(root, tmp_path / "run", s4p_model))
    model = finetune.build_model(args)
    start = S5ForSemanticSegmentation.from_pretrained(s4p_model)
    for key, value in start.decoders[0].state_dict().items():
        assert np.array_equal(value.numpy(), model.decoders[0].state_dict()[key].numpy()), key
    assert [m for m in model.classifiers[0].modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels == 3


# ---- bad inputs ---------------------------------------------------------------------------------------------------
def _corrupt(root: Path, problem: str) -> str:
    """Damage a fake 4-band uint16 GeoTIFF folder; returns the file name the error must name."""
    images, masks = root / "images", root / "masks"
    if problem == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(masks / "tile_001.png")
        return "tile_001.png"
    if problem == "crs":
        pixels = np.zeros((32, 32, 1), np.uint8)
        (masks / "tile_001.png").unlink()
        write_multiband_geotiff(masks / "tile_001.tif", pixels, epsg=32633)
        return "tile_001.tif"
    if problem == "bands":
        write_multiband_geotiff(images / "tile_002.tif", np.zeros((32, 32, 3), np.uint16))
        return "tile_002.tif"
    if problem == "dtype":
        write_multiband_geotiff(images / "tile_002.tif", np.zeros((32, 32, 4), np.float32))
        return "tile_002.tif"
    if problem == "value":
        mask = np.array(Image.open(masks / "tile_001.png"))
        mask[5, 5] = 7
        Image.fromarray(mask).save(masks / "tile_001.png")
        return r"tile_001.png: mask value\(s\) 7 \(1 px\) outside the classes 0..3"
    if problem == "no_mask":
        (masks / "tile_002.png").unlink()
        return r"tile_002.tif: no mask for this image"
    if problem == "nan":
        for index in range(3):
            pixels = np.full((32, 32, 4), 0.5, np.float32)
            pixels[1, 2, 3] = np.nan if index == 1 else 0.5
            write_multiband_geotiff(images / f"tile_{index:03d}.tif", pixels)
        return r"tile_001.tif: 1 NaN/Inf values \(first at row 1, column 2\)"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["size", "crs", "bands", "dtype", "value", "no_mask", "nan"])
def test_bad_folder_inputs_name_the_file(tmp_path, problem):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=3, size=32, bands=4, dtype="uint16")
    expected = _corrupt(root, problem)
    with pytest.raises(DataFileError, match=expected):
        folder = LabeledFolder(root, "mine")
        folder.check()
        for pair in sorted(folder.splits["train"], key=lambda p: p.id):
            folder.read(pair)


# ---- band statistics ----------------------------------------------------------------------------------------------
def test_band_stats_stream_equals_the_direct_computation_and_skip_nodata(tmp_path):
    from s5_hf.data.band_stats import compute_band_stats

    root = make_fake_labeled_folder(tmp_path / "d", num_images=4, size=32, bands=4, dtype="uint16", nodata=0,
                                    nodata_border=6)
    folder = LabeledFolder(root, "mine")
    stats = compute_band_stats(folder.iter_images("train"))
    valid = []
    for pair in folder.splits["train"]:
        pixels, invalid = read_image(pair.image)
        valid.append(pixels[~invalid].astype(np.float64))
    direct = np.concatenate(valid)
    assert stats.count == len(direct) == 4 * 32 * 26 and stats.dtype == "uint16" and stats.bands == 4
    np.testing.assert_allclose(stats.mean, direct.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats.std, direct.std(axis=0), rtol=1e-10)
    assert min(stats.mean) > 150  # the zero nodata border would pull the means down


def test_band_stats_refuse_mixed_bands_and_constant_bands():
    from s5_hf.data.band_stats import compute_band_stats

    with pytest.raises(ValueError, match="image 1: 3 band\\(s\\) of uint16, but the first image has 4"):
        compute_band_stats([np.ones((4, 4, 4), np.uint16), np.ones((4, 4, 3), np.uint16)])
    with pytest.raises(ValueError, match=r"Band\(s\) \[1\] are constant"):
        compute_band_stats([np.stack([np.arange(16.0).reshape(4, 4), np.ones((4, 4))], axis=-1)])


# ---- N bands end to end -------------------------------------------------------------------------------------------
def test_four_band_uint16_folder_trains_and_saves_its_band_statistics(tmp_path):
    from s5_hf.data.band_stats import compute_band_stats

    finetune = load_script("finetune_mdf")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=4, size=64, bands=4, dtype="uint16", nodata=0,
                                    nodata_border=8)
    out = tmp_path / "run"
    args = ["--train_datasets", f"fields={root}", "--output_dir", str(out), "--preset", "vit-b",
            "--config_overrides", json.dumps({**TINY, "num_channels": 4}), "--crop_size", "64", "--batch_size", "2",
            "--max_train_steps", "3", "--eval_steps", "0", "--logging_steps", "1", "--learning_rate", "1e-3"]
    finetune.main(args)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    from s5_hf import S5ImageProcessor

    processor = S5ImageProcessor.from_pretrained(out / "model")
    expected = compute_band_stats(LabeledFolder(root, "fields").iter_images("train"))
    assert processor.do_rescale is False and processor.input_dtype == "uint16"
    np.testing.assert_allclose(processor.image_mean, expected.mean)
    np.testing.assert_allclose(processor.image_std, expected.std)
    model = S5ForSemanticSegmentation.from_pretrained(out / "model")
    assert model.config.num_channels == 4 and model.config.task_names == ["fields"]
    # The saved processor prepares a new 4-band scene for the saved model.
    pixels = read_image(root / "images" / "tile_000.tif")[0]
    with torch.no_grad():
        logits = model(processor(pixels, return_tensors="pt")["pixel_values"]).logits
    assert logits.shape == (1, 4, 512, 512) and torch.isfinite(logits).all()


def test_band_selection_clipping_and_validation_of_six_band_data(tmp_path):
    from s5_hf import S5ImageProcessor
    from s5_hf.data.band_stats import compute_band_stats

    finetune = load_script("finetune_mdf")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=4, size=64, bands=6, dtype="uint16")
    out = tmp_path / "run"
    args = ["--train_datasets", f"fields={root}", "--output_dir", str(out), "--validation_split", "0.25",
            "--bands", "fields=5,3,2,1", "--clip_percentiles", "2", "98", "--eval_steps", "2",
            "--config_overrides", json.dumps({**TINY, "num_channels": 4}), "--crop_size", "64", "--batch_size", "2",
            "--max_train_steps", "2", "--learning_rate", "1e-3"]
    outcome = finetune.main(args)
    # Evaluated on the held-out quarter through the saved processor (the model's 4 selected bands, clipped).
    result = outcome["results"]["fields"]
    assert result.split == "val" and result.num_samples == 1 and 0 <= result.scores.mean_iou <= 1
    processor = S5ImageProcessor.from_pretrained(out / "model")
    expected = compute_band_stats(LabeledFolder(root, "fields", validation_split=0.25, bands=(5, 3, 2, 1))
                                  .iter_images("train"), percentiles=(2, 98))
    assert processor.do_clip and len(processor.clip_min) == 4
    np.testing.assert_allclose(processor.clip_min, expected.clip_min)
    np.testing.assert_allclose(processor.clip_max, expected.clip_max)
    np.testing.assert_allclose(processor.image_mean, expected.mean)
    # A model of the wrong band count is refused before the run folder exists.
    args[args.index("--config_overrides") + 1] = json.dumps(TINY)
    args[args.index("--output_dir") + 1] = str(tmp_path / "other")
    with pytest.raises(ValueError, match="The data has 4 bands but the model takes 3"):
        finetune.main(args)
    assert not (tmp_path / "other").exists()


def test_s4p_pretrains_on_a_labeled_folder_with_labels(tmp_path):
    import datasets

    from s5_hf.data import to_parquet_shards
    from s5_hf.data.synthetic import make_fake_unlabeled_pool

    pretrain = load_script("pretrain_s4p")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=4, size=64, image_format="png", num_classes=3)
    (root / "id2label.json").unlink()
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "soil", "1": "wheat", "2": "maize"}))
    pool = make_fake_unlabeled_pool(tmp_path / "pool", num_images=4, size=64)
    paths = sorted(p for p in pool.rglob("*") if p.is_file())
    rows = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "id": [p.stem for p in paths]})
    to_parquet_shards(rows.cast_column("image", datasets.Image()), tmp_path / "rs4p", shard_size_mb=1, min_shards=1,
                      validate=False)
    out = tmp_path / "run"
    pretrain.main(["--labeled", f"mycrops={root}", "--labels", str(labels), "--unlabeled", f"rs4p={tmp_path / 'rs4p'}",
                   "--output_dir", str(out), "--config_overrides", json.dumps(TINY), "--crop_size", "64",
                   "--batch_size", "2", "--max_train_steps", "2", "--eval_steps", "0", "--logging_steps", "1"])
    model = S5ForSemanticSegmentation.from_pretrained(out / "model")
    assert [task.to_dict() for task in model.config.tasks] == [
        {"name": "mycrops", "id2label": {0: "soil", 1: "wheat", 2: "maize"}, "ignore_index": 255}]


def test_jpeg_images_with_png_masks(tmp_path):
    root = make_fake_labeled_folder(tmp_path / "d", num_images=2, size=32, image_format="png")
    for path in (root / "images").glob("*.png"):
        Image.open(path).save(path.with_suffix(".jpg"), quality=95)
        path.unlink()
    got = rows(LabeledFolder(root))
    assert len(got) == 2 and all(r["image"].mode == "RGB" and r["image"].size == (32, 32) for r in got)


def test_finetune_options_nodata_ignore_index_and_validation_split(tmp_path, s4p_model):
    finetune = load_script("finetune_mdf")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=8, size=32, bands=4, dtype="uint16")
    args = finetune.parse_args(finetune_args(root, tmp_path / "run", s4p_model, "--nodata", "nan",
                                             "--ignore_index", "mycrops=254", "--validation_split", "mycrops=0.25"))
    source = args.sources["mycrops"]
    assert np.isnan(source.nodata) and source.ignore_index == 254 and source.validation_split == 0.25
    assert source.task().ignore_index == 254
    assert len(source.folder().splits["val"]) == 2 and args.validation_splits["mycrops"] == "val"
    mask = next(iter(source.load("train")))["mask"]
    assert mask.dtype == np.uint8
    with pytest.raises(ValueError, match=r"--labels: .*x\.json: cannot read the class names"):
        finetune.parse_args(finetune_args(root, tmp_path / "run", s4p_model, "--labels", "mycrops=x.json"))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "a", "2": "b"}))
    with pytest.raises(ValueError, match=r"labels\.json: class ids must be 0..K-1 without gaps, got \[0, 2\]"):
        finetune.parse_args(finetune_args(root, tmp_path / "run", s4p_model, "--labels", f"mycrops={labels}"))
    labels.write_text(json.dumps({"0": "a", "1": "b"}))
    with pytest.raises(ValueError, match=r"--labels names \['other'\], which are not among --train_datasets"):
        finetune.parse_args(finetune_args(root, tmp_path / "run", s4p_model, "--labels", f"other={labels}"))
    with pytest.raises(ValueError, match="--nodata: 'zero' is not a valid value"):
        finetune.parse_args(finetune_args(root, tmp_path / "run", s4p_model, "--nodata", "zero"))


def test_shard_source_of_a_new_task_checks_its_mask_values(tmp_path, s4p_model):
    import datasets

    from s5_hf.data import to_parquet_shards

    finetune = load_script("finetune_mdf")
    masks = [np.zeros((64, 64), np.uint8) for _ in range(4)]
    masks[2][10, 10] = 9  # not one of the 3 classes
    images = [Image.fromarray(np.full((64, 64, 3), 50 * i, np.uint8)) for i in range(4)]
    rows_ = datasets.Dataset.from_dict({"image": images, "mask": [Image.fromarray(m) for m in masks],
                                        "id": [f"s{i}" for i in range(4)]})
    to_parquet_shards(rows_, tmp_path / "shards", shard_size_mb=1, min_shards=1, validate=False)
    (tmp_path / "shards" / "id2label.json").write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    args = finetune_args(tmp_path / "shards", tmp_path / "run", s4p_model, "--validation_splits", "mycrops=",
                         "--test_splits", "mycrops=", "--max_train_steps", "4", "--shuffle_buffer", "0")
    with pytest.raises(ValueError, match=r"mycrops=.*shards: sample 's2': mask value\(s\) 9 \(1 px\) outside the classes"):
        finetune.main(args)


def test_a_corrupt_geotiff_is_named_by_every_reader(tmp_path):
    from s5_hf.data.folders import raster_info, read_image, read_mask
    from s5_hf.data.images import DataFileError

    bad = tmp_path / "scene.tif"
    bad.write_bytes(b"not a tiff")
    for read in (raster_info, read_image, read_mask):
        with pytest.raises(DataFileError, match=r"scene\.tif: cannot read the GeoTIFF"):
            read(bad)


def test_mdf_from_shards_of_a_folder_matches_the_folder(tmp_path):
    """`folder_to_shards` keeps the rows, their order and the nodata: the same band statistics (read from the shard
    features and card instead of the GeoTIFF headers) and, with the stored order (--shuffle_buffer 0) and one seed,
    the same losses step by step."""
    from s5_hf import S5ImageProcessor
    from s5_hf.data.normalization import data_normalization
    from s5_hf.data.shards import folder_to_shards

    finetune = load_script("finetune_mdf")
    root = make_fake_labeled_folder(tmp_path / "d", num_images=6, size=64, bands=4, dtype="uint16", nodata=0,
                                    nodata_border=8, layout="splits")
    folder_to_shards(LabeledFolder(root, "fields"), tmp_path / "shards")
    sources = {kind: DataSource.parse(f"fields={location}") for kind, location in
               (("folder", root), ("shards", tmp_path / "shards"))}
    norms = {kind: data_normalization({"fields": s}, {"fields": "train"}, 4) for kind, s in sources.items()}
    assert norms["folder"].raw_units and norms["shards"].raw_units
    np.testing.assert_allclose(norms["shards"].mean, norms["folder"].mean, rtol=1e-12)
    np.testing.assert_allclose(norms["shards"].std, norms["folder"].std, rtol=1e-12)
    losses = {}
    for kind, source in sources.items():
        out = tmp_path / f"run_{kind}"
        outcome = finetune.main(["--train_datasets", f"fields={source.location}", "--output_dir", str(out),
                                 "--config_overrides", json.dumps({**TINY, "num_channels": 4}), "--crop_size", "64",
                                 "--batch_size", "2", "--max_train_steps", "2", "--eval_steps", "0",
                                 "--logging_steps", "1", "--learning_rate", "1e-3", "--shuffle_buffer", "0",
                                 "--max_eval_samples", "2"])
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        # The losses, then the val scores through the saved processor (the shard rows reach it as uint16 arrays).
        losses[kind] = [r["loss"] for r in records if "loss" in r]
        losses[kind].append(outcome["results"]["fields"].scores.mean_iou)
        np.testing.assert_allclose(S5ImageProcessor.from_pretrained(out / "model").image_mean, norms[kind].mean)
    assert len(losses["folder"]) == 3 and losses["shards"] == losses["folder"]
