"""Parquet shards and dataset card written by s5_hf.data.to_parquet_shards."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from datasets.distributed import split_dataset_by_node
from huggingface_hub import DatasetCard
from PIL import Image

from s5_hf.data import DatasetCardInfo, load_benchmark, to_parquet_shards
from s5_hf.data import synthetic as fake

SHARD = re.compile(r"^(\w+)-(\d{5})-of-(\d{5})\.parquet$")


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory) -> datasets.Dataset:
    """~140 labelled 32 px patches of a fake Vaihingen (map-style)."""
    base = tmp_path_factory.mktemp("shards")
    root = fake.make_fake_vaihingen(base / "vaihingen", size=64, seed=1)
    return load_benchmark("vaihingen", root, "train", patch_size=32, cache_dir=base / "cache")


@pytest.fixture(scope="module")
def loveda_root(tmp_path_factory) -> Path:
    return fake.make_fake_loveda(tmp_path_factory.mktemp("loveda") / "loveda", num_images=3, size=32, seed=2)


def arrays(rows) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    return [
        (row["id"], np.asarray(row["image"]), None if row["mask"] is None else np.asarray(row["mask"])) for row in rows
    ]


def assert_same_rows(actual, expected):
    assert [a[0] for a in actual] == [e[0] for e in expected]
    for (_, image, mask), (_, image_e, mask_e) in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(image, image_e)
        np.testing.assert_array_equal(mask, mask_e)


def shard_names(out_dir: Path) -> list[str]:
    return sorted(p.name for p in (out_dir / "data").iterdir())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its content."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_streaming_and_map_style_pixel_exact(vaihingen, tmp_path):
    out = tmp_path / "out"
    paths = to_parquet_shards(vaihingen, out, shard_size_mb=0.05)
    names = [p.name for p in paths]
    assert len(names) > 1 and names == shard_names(out)
    assert all(SHARD.match(n)[1] == "train" and int(SHARD.match(n)[3]) == len(names) for n in names)
    assert [int(SHARD.match(n)[2]) for n in names] == list(range(len(names)))
    expected = arrays(vaihingen)
    streamed = load_dataset(str(out), split="train", streaming=True)
    assert_same_rows(arrays(streamed), expected)
    mapped = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert mapped.features == vaihingen.features
    assert_same_rows(arrays(mapped), expected)
    assert mapped[0]["mask"].mode == "L" and mapped[0]["source"] == "vaihingen"


def test_shard_size_limit_and_row_groups(vaihingen, tmp_path):
    big = to_parquet_shards(vaihingen, tmp_path / "big", shard_size_mb=100)
    assert len(big) == 1 and pq.ParquetFile(big[0]).metadata.num_rows == len(vaihingen)
    assert pq.ParquetFile(big[0]).metadata.num_row_groups == 2  # 100-row groups
    small = to_parquet_shards(vaihingen, tmp_path / "small", shard_size_mb=0.02)
    data_sizes = [p.stat().st_size - pq.ParquetFile(p).metadata.serialized_size for p in small]
    assert len(small) >= 5 and max(data_sizes) <= 0.02 * 2**20 * 1.05


def test_min_shards_from_a_stream_and_split_by_node_covers_every_sample_once(loveda_root, tmp_path):
    stream = load_benchmark("loveda", loveda_root, "train", streaming=True)  # 6 images, unknown length
    out = tmp_path / "out"
    paths = to_parquet_shards(stream, out, shard_size_mb=100, min_shards=4)
    assert [pq.ParquetFile(p).metadata.num_rows for p in paths] == [2, 2, 1, 1]
    all_ids = [row["id"] for row in load_benchmark("loveda", loveda_root, "train", streaming=True)]
    for world_size in (2, 3):  # shards divisible by the ranks, and not
        seen = []
        for rank in range(world_size):
            part = split_dataset_by_node(load_dataset(str(out), split="train", streaming=True), rank, world_size)
            seen += [row["id"] for row in part]
        assert sorted(seen) == sorted(all_ids) and len(seen) == len(set(seen))
    with pytest.raises(ValueError, match="6 rows, fewer than min_shards=7"):
        to_parquet_shards(stream, tmp_path / "too_many", min_shards=7)


def test_dataset_card_is_a_valid_hub_card(vaihingen, loveda_root, tmp_path):
    out = tmp_path / "out"
    to_parquet_shards(vaihingen, out)
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    features = {f["name"]: f["dtype"] for f in data["dataset_info"]["features"]}
    assert features == {"image": "image", "mask": "image", "source": "string", "id": "string"}
    assert data["dataset_info"]["splits"] == [
        {
            "name": "train",
            "num_bytes": (out / "data" / "train-00000-of-00001.parquet").stat().st_size,
            "num_examples": len(vaihingen),
        }
    ]
    label_set = data["label_set"]
    assert label_set["class_names"] == {
        0: "impervious_surface",
        1: "building",
        2: "low_vegetation",
        3: "tree",
        4: "car",
    }
    assert label_set["ignore_index"] == 5 and label_set["extra_ids"] == {5: "clutter"} and label_set["void_id"] == 255
    assert data["license"] == "other" and data["license_name"]
    assert "| 5 | clutter" in card.text and "| 255 | void" in card.text and "rottensteiner" in card.text
    assert data["s5_statistics"]["train"]["sources"] == {"vaihingen": len(vaihingen)}
    # A second split joins the first one in the configs; explicit card fields win.
    loveda = load_benchmark("loveda", loveda_root, "val", streaming=True)
    with pytest.raises(ValueError, match="label set 'vaihingen'"):  # LoveDA ids 5, 6 are not ISPRS ids
        to_parquet_shards(loveda, out, split="validation", label_set="vaihingen")
    to_parquet_shards(loveda, out, split="validation", card={"pretty_name": "Mixed", "license": "cc-by-4.0"})
    data = DatasetCard.load(out / "README.md").data.to_dict()
    assert data["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "validation", "path": "data/validation-*"},
    ]
    assert data["pretty_name"] == "Mixed" and data["license"] == "cc-by-4.0"
    assert sorted(data["s5_statistics"]) == ["train", "validation"]
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {name: len(split) for name, split in loaded.items()} == {"train": len(vaihingen), "validation": 6}
    with pytest.raises(TypeError, match="Unknown DatasetCardInfo field"):
        to_parquet_shards(vaihingen, tmp_path / "bad_card", card={"licence": "mit"})
    assert not (tmp_path / "bad_card").exists()  # checked before anything is written
    assert isinstance(DatasetCardInfo(label_set="isaid").tags, list)


def _segmentation_rows(source: str, masks: list[np.ndarray]) -> datasets.Dataset:
    images = [np.full(mask.shape + (3,), 7, np.uint8) for mask in masks]
    rows = {"image": images, "mask": masks, "source": [source] * len(masks), "id": [f"s{i}" for i in range(len(masks))]}
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "source": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def test_mask_ids_are_validated_against_the_label_set(tmp_path, caplog):
    bad = _segmentation_rows("loveda", [np.zeros((8, 8), np.uint8), np.full((8, 8), 7, np.uint8)])
    with pytest.raises(ValueError, match=r"Row 's1' \(source 'loveda'\).*'loveda'.*7 x 64.*validate=False"):
        to_parquet_shards(bad, tmp_path / "bad")
    assert not list((tmp_path / "bad" / "data").glob("*"))  # nothing left behind
    to_parquet_shards(bad, tmp_path / "unchecked", validate=False)
    stored = [
        np.asarray(row["mask"]) for row in load_dataset(str(tmp_path / "unchecked"), split="train", streaming=True)
    ]
    assert stored[1].max() == 7
    # ISPRS: clutter (5) and void (255) are valid, 6 is not.
    ok = _segmentation_rows("potsdam", [np.array([[0, 4], [5, 255]], np.uint8)])
    to_parquet_shards(ok, tmp_path / "ok")
    with pytest.raises(ValueError, match="6 x 1"):
        to_parquet_shards(_segmentation_rows("potsdam", [np.array([[6, 4]], np.uint8)]), tmp_path / "six")
    # Unknown sources are validated only against an explicit label set.
    pseudo = _segmentation_rows("millionaid", [np.full((4, 4), 15, np.uint8)])
    with caplog.at_level(logging.WARNING, logger="s5_hf.data"):
        to_parquet_shards(pseudo, tmp_path / "unvalidated")
    assert "No label set for source 'millionaid'" in caplog.text
    to_parquet_shards(pseudo, tmp_path / "pseudo", label_set="isaid")
    assert DatasetCard.load(tmp_path / "pseudo" / "README.md").data.to_dict()["label_set"]["name"] == "isaid"
    with pytest.raises(ValueError, match="16 x 16"):
        to_parquet_shards(
            _segmentation_rows("millionaid", [np.full((4, 4), 16, np.uint8)]), tmp_path / "p2", label_set="isaid"
        )


def test_interrupted_write_leaves_no_shard_and_keeps_the_old_one(vaihingen, tmp_path):
    out = tmp_path / "out"
    to_parquet_shards(vaihingen, out, shard_size_mb=100)
    before = (out / "data" / "train-00000-of-00001.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        to_parquet_shards(vaihingen, out)

    def broken():
        for i, row in enumerate(
            vaihingen.cast_column("image", datasets.Image(decode=False)).cast_column(
                "mask", datasets.Image(decode=False)
            )
        ):
            if i == 120:
                raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the second row group
            yield row

    stream = datasets.IterableDataset.from_generator(broken, features=vaihingen.features)
    with pytest.raises(KeyboardInterrupt):
        to_parquet_shards(stream, out, shard_size_mb=0.05, overwrite=True)
    assert shard_names(out) == ["train-00000-of-00001.parquet"]
    assert (out / "data" / "train-00000-of-00001.parquet").read_bytes() == before
    with pytest.raises(KeyboardInterrupt):
        to_parquet_shards(stream, tmp_path / "fresh", shard_size_mb=0.05)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staged folder left beside it
    # A successful overwrite replaces every old shard.
    to_parquet_shards(vaihingen, out, shard_size_mb=0.05, overwrite=True)
    assert len(shard_names(out)) > 1 and "train-00000-of-00001.parquet" not in shard_names(out)


def test_path_only_images_are_embedded_and_extra_columns_kept(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.jpg")
        Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(files[-1])
    original = [f.read_bytes() for f in files]
    dataset = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "score": [0.5, 1.5, 2.5], "source": ["star"] * 3, "id": ["a", "b", "c"]}
    ).cast_column("image", datasets.Image())
    to_parquet_shards(dataset, tmp_path / "out")
    for f in files:
        f.unlink()
    rows = list(
        load_dataset(str(tmp_path / "out"), split="train", streaming=True).cast_column(
            "image", datasets.Image(decode=False)
        )
    )
    assert [r["image"]["bytes"] for r in rows] == original  # the original JPEG bytes, not a re-encoding
    assert [r["score"] for r in rows] == [0.5, 1.5, 2.5]


def test_masks_are_stored_as_png_mode_l(tmp_path):
    palette_mask = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)).convert("P")
    buffer = io.BytesIO()
    palette_mask.save(buffer, format="PNG")
    features = datasets.Features(
        {"image": datasets.Image(), "mask": datasets.Image(), "source": datasets.Value("string")}
    )
    dataset = datasets.Dataset.from_dict(
        {
            "image": [np.zeros((2, 2, 3), np.uint8)],
            "mask": [{"bytes": buffer.getvalue(), "path": None}],
            "source": ["loveda"],
        },
        features=features,
    )
    to_parquet_shards(dataset, tmp_path / "out")
    row = next(iter(load_dataset(str(tmp_path / "out"), split="train", streaming=True)))
    assert row["mask"].mode == "L" and row["mask"].format == "PNG"
    np.testing.assert_array_equal(np.asarray(row["mask"]), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="Invalid split name"):
        to_parquet_shards(dataset, tmp_path / "x", split="train-2")


def test_card_is_checked_before_any_shard_is_replaced(vaihingen, tmp_path):
    out = tmp_path / "out"
    to_parquet_shards(vaihingen, out, shard_size_mb=100)
    before = snapshot(out)
    with pytest.raises(KeyError, match="no_such_label_set"):
        to_parquet_shards(vaihingen, out, shard_size_mb=0.05, overwrite=True, card={"label_set": "no_such_label_set"})
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_only_files_it_wrote_are_replaced(vaihingen, loveda_root, tmp_path):
    """The manifest lists what was written: other splits stay (same bytes); an edited card or a file s5-hf
    did not write stops the next write before anything changes."""
    out = tmp_path / "out"
    to_parquet_shards(vaihingen, out, shard_size_mb=0.05)
    loveda = load_benchmark("loveda", loveda_root, "val", streaming=True)
    to_parquet_shards(loveda, out, split="validation")
    train = {name: data for name, data in snapshot(out).items() if name.startswith("data/train-")}
    (out / ".gitattributes").write_text("*.parquet filter=lfs\n")  # hidden files (a clone's) are kept too
    to_parquet_shards(loveda, out, split="validation", overwrite=True, min_shards=2)
    after = snapshot(out)
    assert {name: data for name, data in after.items() if name.startswith("data/train-")} == train
    assert after[".gitattributes"] == b"*.parquet filter=lfs\n"
    manifest = json.loads(after[".s5-manifest.json"])
    assert manifest["files"] == sorted(["README.md", *train, "data/validation-00000-of-00002.parquet",
                                        "data/validation-00001-of-00002.parquet"])

    (out / "README.md").write_text((out / "README.md").read_text() + "\nMy own notes.\n")
    edited = snapshot(out)
    with pytest.raises(FileExistsError, match=r"README.md \(edited since s5-hf wrote it\)"):
        to_parquet_shards(loveda, out, split="validation", overwrite=True)
    assert snapshot(out) == edited


def test_readers_never_see_a_partial_shard_set(vaihingen, tmp_path, monkeypatch):
    """Between any two file-system steps of an overwrite, the folder holds the complete old shard set with its
    card, or the complete new one (checked before every rename and delete the writer makes)."""
    import os
    import shutil

    out = tmp_path / "out"
    to_parquet_shards(vaihingen, out, shard_size_mb=100)

    def state():
        card = (out / "README.md").read_bytes() if (out / "README.md").exists() else None
        visible = [name for name in shard_names(out) if not name.startswith(".")] if (out / "data").exists() else None
        return visible, card

    seen = []

    def watch(function):
        def wrapper(*args, **kwargs):
            seen.append(state())
            return function(*args, **kwargs)
        return wrapper

    old = state()
    for owner, name in ((os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (shutil, "rmtree"),
                        (Path, "unlink"), (Path, "rename"), (Path, "replace")):
        monkeypatch.setattr(owner, name, watch(getattr(owner, name)))
    to_parquet_shards(vaihingen, out, shard_size_mb=0.05, overwrite=True)
    monkeypatch.undo()
    new = state()
    assert len(new[0]) > 1 and seen and all(s in (old, new) for s in seen), [s[0] for s in seen]


def test_n_band_arrays_are_stored_in_their_own_dtype(tmp_path):
    """Images other than 8-bit RGB go into shards as arrays (an Array3D column), not as RGB images."""
    import datasets

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 60000, (24, 32, 13), dtype=np.uint16) for _ in range(3)]
    features = datasets.Features({"image": datasets.Array3D(shape=(None, 32, 13), dtype="uint16"),
                                  "mask": datasets.Image(), "id": datasets.Value("string")})
    rows = [{"image": image, "mask": np.zeros((24, 32), np.uint8), "id": f"tile_{i}"} for i, image in enumerate(images)]
    to_parquet_shards(datasets.Dataset.from_list(rows, features=features), tmp_path / "s", validate=False)
    back = datasets.load_dataset(str(tmp_path / "s"), split="train")
    assert back.features["image"] == features["image"]  # stored as uint16 (datasets' numpy format widens to int64)
    for row, image in zip(back.with_format("numpy"), images):
        assert np.array_equal(row["image"], image)


# ---- a user's labeled folder as shards ----------------------------------------------------------------------------
def test_labeled_folder_to_shards_round_trip_with_card_metadata(tmp_path):
    from s5_hf.data.folders import LabeledFolder
    from s5_hf.data.normalization import band_layout, nodata_fill
    from s5_hf.data.shards import card_metadata, folder_to_shards
    from s5_hf.data.streams import DataSource

    root = fake.make_fake_labeled_folder(tmp_path / "d", num_images=6, size=32, bands=4, dtype="uint16", nodata=0,
                                         nodata_border=4, layout="splits")
    folder = LabeledFolder(root, "fields", ignore_index=254)
    written = folder_to_shards(folder, tmp_path / "shards", shard_size_mb=1)
    assert {split: [p.name for p in paths] for split, paths in written.items()} == {
        "train": ["train-00000-of-00001.parquet"], "val": ["val-00000-of-00001.parquet"]}
    metadata = card_metadata(tmp_path / "shards")
    assert metadata["id2label"] == {i: f"class_{i}" for i in range(4)} and metadata["ignore_index"] == 254
    assert metadata["bands"]["count"] == 4 and metadata["dtype"] == "uint16" and metadata["nodata"] == 0.0
    source = DataSource.parse(f"fields={tmp_path / 'shards'}")
    assert source.kind == "shards" and source.default_splits() == ("train", "val", "val")
    assert source.task().to_dict() == {"name": "fields", "id2label": metadata["id2label"], "ignore_index": 254}
    assert band_layout(source) == (4, "uint16") and nodata_fill(source) == 0.0
    for split in ("train", "val"):
        expected = list(folder.load(split))
        got = list(source.load(split))
        assert [r["id"] for r in got] == [r["id"] for r in expected]  # the folder's order
        for row, want in zip(got, expected, strict=True):
            assert row["image"].dtype == np.uint16 and row["image"].shape == (32, 32, 4)
            np.testing.assert_array_equal(row["image"], want["image"])
            np.testing.assert_array_equal(row["mask"], want["mask"])
            assert (row["mask"][:, :4] == 254).all()  # nodata border: the ignore index, as in the folder rows
    # Train only: nothing to validate on by default.
    folder_to_shards(folder, tmp_path / "train_only", splits=["train"])
    assert DataSource.parse(f"fields={tmp_path / 'train_only'}").default_splits() == ("train", "", "")


def test_folder_to_shards_names_a_bad_mask_row_and_leaves_the_folder_as_it_was(tmp_path):
    from s5_hf.data.folders import LabeledFolder
    from s5_hf.data.shards import folder_to_shards

    root = fake.make_fake_labeled_folder(tmp_path / "d", num_images=3, size=32, bands=4, dtype="uint16")
    out = tmp_path / "shards"
    folder_to_shards(LabeledFolder(root, "fields"), out)
    before = snapshot(out)
    mask = np.array(Image.open(root / "masks" / "tile_002.png"))
    mask[3, 3] = 9
    Image.fromarray(mask).save(root / "masks" / "tile_002.png")
    with pytest.raises(ValueError, match=r"Row 'tile_002': .*tile_002\.png: mask value\(s\) 9 \(1 px\) outside"):
        folder_to_shards(LabeledFolder(root, "fields"), out, overwrite=True)
    assert snapshot(out) == before
    with pytest.raises(ValueError, match=r"Row 'tile_002'"):
        folder_to_shards(LabeledFolder(root, "fields"), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (root / "id2label.json").unlink()
    with pytest.raises(ValueError, match="class names unknown"):
        folder_to_shards(LabeledFolder(root, "fields"), tmp_path / "new")


# ---- class names from ClassLabel features -------------------------------------------------------------------------
def _rows_with(features_extra: dict, values: dict) -> datasets.Dataset:
    images = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(2)]
    masks = [Image.fromarray(np.zeros((16, 16), np.uint8)) for _ in range(2)]
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(), "id": datasets.Value("string"),
                                  **features_extra})
    return datasets.Dataset.from_dict({"image": images, "mask": masks, "id": ["a", "b"], **values}, features=features)


def test_class_names_come_from_a_classlabel_feature_of_local_shards(tmp_path):
    from s5_hf.data.streams import DataSource, class_names_from_features

    names = ["water", "forest", "urban"]
    rows = _rows_with({"label_names": datasets.Sequence(datasets.ClassLabel(names=names))}, {"label_names": [[0], [1]]})
    to_parquet_shards(rows, tmp_path / "seq", validate=False)
    assert DataSource.parse(f"lc={tmp_path / 'seq'}").task().id2label == dict(enumerate(names))
    rows = _rows_with({"scene": datasets.ClassLabel(names=names)}, {"scene": [0, 2]})
    to_parquet_shards(rows, tmp_path / "column", validate=False)
    assert DataSource.parse(f"lc={tmp_path / 'column'}").task().id2label == dict(enumerate(names))
    # The card's dataset_info is read when the Parquet schema has no `datasets` metadata.
    data = tmp_path / "column" / "data"
    for path in data.glob("*.parquet"):
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    assert DataSource.parse(f"lc={tmp_path / 'column'}").task().id2label == dict(enumerate(names))
    # The rule: every ClassLabel counts and they must agree; a ClassLabel without names names nothing.
    features = datasets.Features({"a": datasets.ClassLabel(names=names),
                                  "b": datasets.Sequence(datasets.Sequence(datasets.ClassLabel(names=names[:2])))})
    with pytest.raises(ValueError, match=r"lc: its ClassLabel features name different classes \(a: .*; b: "):
        class_names_from_features(features, "lc")
    assert class_names_from_features(datasets.Features({"k": datasets.ClassLabel(num_classes=3)})) is None
    assert class_names_from_features({"s": {"inner": datasets.ClassLabel(names=names)}}) == dict(enumerate(names))
    # No ClassLabel, no card, no id2label.json: the error asks for --labels.
    to_parquet_shards(_rows_with({}, {}), tmp_path / "plain", validate=False)
    with pytest.raises(ValueError, match="classes are unknown: pass --labels"):
        DataSource.parse(f"lc={tmp_path / 'plain'}").task()


def test_hub_sources_parse_their_builder_features_with_the_same_rule(monkeypatch):
    from s5_hf.data import streams

    seen = []

    def fake_hub_features(repo_id):  # the real one asks the Hub (datasets.load_dataset_builder)
        seen.append(repo_id)
        return datasets.Features({"image": datasets.Image(), "labels": datasets.Sequence(
            datasets.ClassLabel(names=["bare", "green"]))})

    monkeypatch.setattr(streams, "hub_features", fake_hub_features)
    task = streams.DataSource.parse("fields=org/fields").task()
    assert seen == ["org/fields"] and task.id2label == {0: "bare", 1: "green"}

    def offline(repo_id):
        raise ConnectionError("offline")

    monkeypatch.setattr(streams, "hub_features", offline)
    with pytest.raises(ValueError, match=r"fields=org/fields: its classes are unknown .*offline.*pass --labels"):
        streams.DataSource.parse("fields=org/fields").task()


def test_hub_sources_of_band_arrays_take_their_layout_from_the_declared_features(monkeypatch):
    """A Hub dataset of N-band arrays is normalized with its own band statistics, never as 8-bit RGB."""
    from s5_hf.data import normalization, streams

    def fake_hub_features(repo_id):  # the real one asks the Hub (datasets.load_dataset_builder)
        return datasets.Features({"image": datasets.Array3D((64, 64, 4), "uint16"),
                                  "mask": datasets.Array2D((64, 64), "uint8")})

    monkeypatch.setattr(streams, "hub_features", fake_hub_features)
    assert normalization.band_layout(streams.DataSource.parse("fields=org/fields")) == (4, "uint16")

    def offline(repo_id):
        raise ConnectionError("offline")

    monkeypatch.setattr(streams, "hub_features", offline)
    assert normalization.band_layout(streams.DataSource.parse("fields=org/fields")) == normalization.RGB8
