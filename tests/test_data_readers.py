"""Benchmark readers against synthetic copies of the owners' layouts (s5_hf.data)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s5_hf.data import DataFileError, load_benchmark
from s5_hf.data import synthetic as fake
from s5_hf.data.patches import patch_windows, window_starts

# Colour codes from the benchmarks' own documentation (not from the code under test).
ISPRS_COLORS = {
    (255, 255, 255): 0,  # impervious surfaces
    (0, 0, 255): 1,  # building
    (0, 255, 255): 2,  # low vegetation
    (0, 255, 0): 3,  # tree
    (255, 255, 0): 4,  # car
    (255, 0, 0): 5,  # clutter/background
}
ISAID_SHIP_COLOR, ISAID_BACKGROUND_COLOR = (0, 0, 63), (0, 0, 0)
VAIHINGEN_TEST_AREAS = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
POTSDAM_TRAIN = (
    "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 6_7 6_8 6_9 6_10 6_11 6_12 7_7 7_8 7_9 7_10 7_11 7_12"
)
SIZE = 48  # fake tile size (ISPRS tiles are 48..60 px)

MAKERS = {
    "vaihingen": fake.make_fake_vaihingen,
    "potsdam": fake.make_fake_potsdam,
    "loveda": fake.make_fake_loveda,
    "openearthmap": fake.make_fake_openearthmap,
    "isaid": fake.make_fake_isaid,
}


def make(name: str, root: Path) -> Path:
    return MAKERS[name](root, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Read-only fake copies of every benchmark (tests that damage files make their own)."""
    base = tmp_path_factory.mktemp("fake")
    return {name: make(name, base / name) for name in MAKERS}


def rows_of(dataset) -> list[dict]:
    """Rows with decoded pixels as arrays, in order."""
    rows = []
    for row in dataset:
        mask = row["mask"]
        rows.append(
            {
                "id": row["id"],
                "source": row["source"],
                "image": np.asarray(row["image"]),
                "image_mode": row["image"].mode,
                "mask": None if mask is None else np.asarray(mask),
                "mask_mode": None if mask is None else mask.mode,
            }
        )
    return rows


def split_patch_id(sample_id: str) -> tuple[str, int, int]:
    match = re.fullmatch(r"(.+)_y(\d{5})_x(\d{5})", sample_id)
    assert match, sample_id
    return match[1], int(match[2]), int(match[3])


def expected_patch(pixels: np.ndarray, top: int, left: int, size: int, fill: int) -> np.ndarray:
    """Reference crop-and-pad written independently of s5_hf.data.patches."""
    out = np.full((size, size) + pixels.shape[2:], fill, dtype=pixels.dtype)
    crop = pixels[top : top + size, left : left + size]
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out


def load(name, root, split, tmp_path, **options):
    return load_benchmark(name, root, split, cache_dir=tmp_path / "cache", **options)


# -- patching ---------------------------------------------------------------------------------------------------


def test_window_starts_shift_last_window_inside():
    assert window_starts(100, 32, 32) == [0, 32, 64, 68]
    assert window_starts(96, 32, 32) == [0, 32, 64]
    assert window_starts(100, 32, 50) == [0, 50, 68]
    assert window_starts(20, 32, 32) == [0]  # smaller than a patch: one (padded) window
    assert patch_windows(40, 70, 32, 32) == [(0, 0), (0, 32), (0, 38), (8, 0), (8, 32), (8, 38)]
    with pytest.raises(ValueError, match="positive"):
        patch_windows(10, 10, 0, 1)


# -- round trips, whole images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vaihingen", "potsdam"])
def test_isprs_whole_tiles_round_trip(name, roots, tmp_path):
    rows = rows_of(load(name, roots[name], "test", tmp_path))  # test split: whole tiles by default
    if name == "vaihingen":
        assert [r["id"] for r in rows] == [f"top_mosaic_09cm_area{a}" for a in VAIHINGEN_TEST_AREAS]
    else:
        assert len(rows) == 14 and "top_potsdam_2_13" in {r["id"] for r in rows}
    seen = set()
    for row in rows:
        expected = fake.fake_sample(name, row["id"], SIZE, seed=3)
        assert row["source"] == name and row["image_mode"] == "RGB" and row["mask_mode"] == "L"
        np.testing.assert_array_equal(row["image"], expected.image)
        np.testing.assert_array_equal(row["mask"], expected.mask)
        seen |= set(np.unique(row["mask"]).tolist())
    assert seen == {0, 1, 2, 3, 4, 5}  # clutter kept as id 5, nothing void in the full ground truth


def test_isprs_colors_map_to_documented_ids(roots, tmp_path):
    rows = rows_of(load("vaihingen", roots["vaihingen"], "test", tmp_path))
    for row in rows[:3]:
        colors = np.asarray(
            Image.open(roots["vaihingen"] / "gts_for_participants" / f"{row['id']}.tif").convert("RGB")
        )
        for color, class_id in ISPRS_COLORS.items():
            where = (colors == color).all(-1)
            assert (row["mask"][where] == class_id).all()
        assert (row["mask"] == 5).any()


@pytest.mark.parametrize("name", ["vaihingen", "potsdam"])
def test_isprs_eroded_boundaries_become_void(name, roots, tmp_path):
    rows = rows_of(load(name, roots[name], "test", tmp_path, eroded=True))
    label_dir = roots[name] / ("gts_eroded_for_participants" if name == "vaihingen" else "5_Labels_all_noBoundary")
    for row in rows[:4]:
        expected = fake.fake_sample(name, row["id"], SIZE, seed=3, eroded=True)
        np.testing.assert_array_equal(row["mask"], expected.mask)
        suffix = "_noBoundary.tif" if name == "vaihingen" else "_label_noBoundary.tif"
        colors = np.asarray(Image.open(label_dir / f"{row['id']}{suffix}").convert("RGB"))
        black = (colors == 0).all(-1)
        assert black.any()
        np.testing.assert_array_equal(row["mask"] == 255, black)


def test_loveda_round_trip_shift_and_no_data(roots, tmp_path):
    root = roots["loveda"]
    rows = rows_of(load("loveda", root, "train", tmp_path))
    assert [r["id"] for r in rows] == ["rural/0", "rural/1", "urban/2", "urban/3"]
    saw_no_data = False
    for row in rows:
        domain, stem = row["id"].split("/")
        raw = np.asarray(Image.open(root / "Train" / domain.capitalize() / "masks_png" / f"{stem}.png"))
        np.testing.assert_array_equal(row["mask"][raw == 0], 255)
        np.testing.assert_array_equal(row["mask"][raw > 0], raw[raw > 0] - 1)
        saw_no_data |= bool((raw == 0).any())
        np.testing.assert_array_equal(row["mask"], fake.fake_sample("loveda", row["id"], SIZE, 3).mask)
        np.testing.assert_array_equal(row["image"], fake.fake_sample("loveda", row["id"], SIZE, 3).image)
    assert saw_no_data
    assert set(np.unique(np.concatenate([r["mask"].ravel() for r in rows])).tolist()) <= {*range(7), 255}


def test_loveda_domains_and_unlabelled_test(roots, tmp_path):
    urban = rows_of(load("loveda", roots["loveda"], "val", tmp_path, domain="urban"))
    assert [r["id"] for r in urban] == ["urban/6", "urban/7"]
    joined = rows_of(load("loveda", roots["loveda"], "train+val", tmp_path, domain="urban"))
    assert [r["id"] for r in joined] == ["urban/2", "urban/3", "urban/6", "urban/7"]
    test = rows_of(load("loveda", roots["loveda"], "test", tmp_path))
    assert len(test) == 4 and all(r["mask"] is None for r in test)
    with pytest.raises(ValueError, match="domain"):
        load("loveda", roots["loveda"], "val", tmp_path, domain="suburban")


def test_openearthmap_round_trip_keeps_other_class(roots, tmp_path):
    root = roots["openearthmap"]
    listed = [line for line in (root / "val.txt").read_text().split()]
    rows = rows_of(load("openearthmap", root, "val", tmp_path))
    assert [r["id"] + ".tif" for r in rows] == listed
    assert "san_juan_4" in {r["id"] for r in rows}  # region names with underscores
    for row in rows:
        expected = fake.fake_sample("openearthmap", row["id"], SIZE, 3)
        np.testing.assert_array_equal(row["mask"], expected.mask)
        np.testing.assert_array_equal(row["image"], expected.image)
    train = rows_of(load("openearthmap", root, "train", tmp_path))
    values = np.concatenate([r["mask"].ravel() for r in train + rows])
    assert (values == 0).any() and values.max() <= 8  # 0 = other is a class, not void
    assert all(r["mask"] is None for r in rows_of(load("openearthmap", root, "test", tmp_path)))


def test_fake_geotiffs_carry_georeferencing(roots):
    for path in (
        roots["vaihingen"] / "top" / "top_mosaic_09cm_area1.tif",
        roots["openearthmap"] / "aachen" / "labels" / "aachen_1.tif",
    ):
        with Image.open(path) as image:
            assert image.format == "TIFF"
            assert 33550 in image.tag_v2 and 33922 in image.tag_v2 and 34735 in image.tag_v2


# -- patches -------------------------------------------------------------------------------------------------------


def test_isprs_train_patches_cover_tiles_exactly(roots, tmp_path):
    rows = rows_of(load("potsdam", roots["potsdam"], "train", tmp_path, patch_size=32, stride=24))
    tiles = {}
    for row in rows:
        tile, top, left = split_patch_id(row["id"])
        tiles.setdefault(tile, []).append((top, left, row))
    assert sorted(tiles) == sorted(f"top_potsdam_{t}" for t in POTSDAM_TRAIN.split())
    for tile, patches in tiles.items():
        expected = fake.fake_sample("potsdam", tile, SIZE, 3)
        covered = np.zeros(expected.mask.shape, dtype=bool)
        for top, left, row in patches:
            assert row["mask"].shape == (32, 32)
            np.testing.assert_array_equal(row["mask"], expected.mask[top : top + 32, left : left + 32])
            np.testing.assert_array_equal(row["image"], expected.image[top : top + 32, left : left + 32])
            covered[top : top + 32, left : left + 32] = True
        assert covered.all()
        height, width = expected.mask.shape
        assert max(t for t, _, _ in patches) == height - 32 and max(x for _, x, _ in patches) == width - 32


def test_isaid_patches_pad_small_scenes_with_void(roots, tmp_path):
    root = roots["isaid"]
    rows = rows_of(load("isaid", root, "train", tmp_path, patch_size=64, stride=48))
    scenes = {split_patch_id(r["id"])[0] for r in rows}
    assert scenes == {"P0000", "P0001", "P0002"}
    padded = 0
    for row in rows:
        scene, top, left = split_patch_id(row["id"])
        expected = fake.fake_sample("isaid", scene, SIZE, 3)
        np.testing.assert_array_equal(row["mask"], expected_patch(expected.mask, top, left, 64, 255))
        np.testing.assert_array_equal(row["image"], expected_patch(expected.image, top, left, 64, 0))
        padded += int(min(expected.mask.shape) < 64)
    assert padded  # at least one scene smaller than a patch was padded
    colors = np.asarray(Image.open(root / "train" / "Semantic_masks" / "images" / "P0000_instance_color_RGB.png"))
    ids = fake.fake_sample("isaid", "P0000", SIZE, 3).mask
    assert (ids[(colors == ISAID_BACKGROUND_COLOR).all(-1)] == 0).all()
    assert (ids[(colors == ISAID_SHIP_COLOR).all(-1)] == 1).all()


def test_isaid_default_patches_are_896(roots, tmp_path):
    rows = list(load_benchmark("isaid", roots["isaid"], "val", streaming=True))
    assert {row["image"].size for row in rows} == {(896, 896)}
    assert {row["id"] for row in rows} == {"P0003_y00000_x00000", "P0004_y00000_x00000"}


# -- streaming ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "options", "num_images"),
    [
        ("vaihingen", "train", {"patch_size": 32}, 16),
        ("loveda", "val", {}, 4),
        ("openearthmap", "train", {}, 9),
        ("isaid", "val", {"patch_size": 40, "stride": 30}, 2),
    ],
)
def test_streaming_yields_the_map_style_samples(name, split, options, num_images, roots, tmp_path):
    mapped = rows_of(load(name, roots[name], split, tmp_path, **options))
    stream = load_benchmark(name, roots[name], split, streaming=True, **options)
    # One shard per image: DataLoader workers and split_dataset_by_node ranks share out whole images.
    assert stream.num_shards == num_images
    streamed = rows_of(stream)
    assert [r["id"] for r in streamed] == [r["id"] for r in mapped] and len(mapped) > 0
    for a, b in zip(mapped, streamed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


# -- bad input -------------------------------------------------------------------------------------------------------


def test_unknown_benchmark_split_and_option(roots, tmp_path):
    with pytest.raises(
        ValueError, match="Unknown benchmark 'deepglobe'.*vaihingen.*potsdam.*loveda.*openearthmap.*isaid"
    ):
        load_benchmark("deepglobe", tmp_path, "train")
    with pytest.raises(ValueError, match="no split 'val'; valid splits: train, test"):
        load_benchmark("vaihingen", roots["vaihingen"], "val")
    with pytest.raises(TypeError, match="unknown option.*'domain'"):
        load_benchmark("vaihingen", roots["vaihingen"], "train", domain="urban")


def test_missing_root_and_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere does not exist.*Expected layout.*images_png"):
        load_benchmark("loveda", tmp_path / "nowhere", "train")
    root = make("vaihingen", tmp_path / "v")
    (root / "gts_for_participants" / "top_mosaic_09cm_area5.tif").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"(?s)1 expected file.*gts_for_participants/top_mosaic_09cm_area5\.tif"
    ):
        load_benchmark("vaihingen", root, "train")
    shutil.rmtree(root / "gts_eroded_for_participants")
    with pytest.raises(FileNotFoundError, match="(?s)eroded=True.*gts_eroded_for_participants"):
        load_benchmark("vaihingen", root, "test", eroded=True)
    isaid = make("isaid", tmp_path / "i")
    (isaid / "val" / "Semantic_masks" / "images" / "P0004_instance_color_RGB.png").unlink()
    with pytest.raises(FileNotFoundError, match="P0004_instance_color_RGB.png"):
        load_benchmark("isaid", isaid, "val")
    oem = make("openearthmap", tmp_path / "o")
    (oem / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        load_benchmark("openearthmap", oem, "val")


def _paint(path: Path, color, box=(slice(0, 3), slice(0, 4))) -> None:
    pixels = np.array(Image.open(path).convert("RGB"))
    pixels[box] = color
    Image.fromarray(pixels).save(path)


def test_isprs_unknown_color_is_an_error_naming_file_color_and_count(tmp_path):
    root = make("vaihingen", tmp_path / "v")
    label = root / "gts_for_participants" / "top_mosaic_09cm_area1.tif"
    _paint(label, (255, 0, 255))
    with pytest.raises(DataFileError, match=r"top_mosaic_09cm_area1\.tif.*unknown label colours.*\(255, 0, 255\) x 12"):
        list(load_benchmark("vaihingen", root, "train", streaming=True))
    with pytest.raises(DataFileError, match=r"top_mosaic_09cm_area1\.tif.*\(255, 0, 255\) x 12"):
        load("vaihingen", root, "train", tmp_path)  # map-style: the reason is not hidden by `datasets`
    # Opt-in: unknown colours become void.
    rows = rows_of(load_benchmark("vaihingen", root, "train", streaming=True, patch_size=None, unknown_color="void"))
    assert (rows[0]["mask"][:3, :4] == 255).all()


def test_isprs_black_in_full_ground_truth_hints_at_eroded(tmp_path):
    root = make("vaihingen", tmp_path / "v")
    _paint(root / "gts_for_participants" / "top_mosaic_09cm_area2.tif", (0, 0, 0))
    with pytest.raises(DataFileError, match=r"\(0, 0, 0\) x 12.*eroded=True"):
        list(load_benchmark("vaihingen", root, "test", streaming=True))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_and_tiff_name_the_file(tmp_path):
    loveda = make("loveda", tmp_path / "l")
    _truncate(loveda / "Train" / "Urban" / "images_png" / "3.png")
    with pytest.raises(DataFileError, match=r"Train/Urban/images_png/3\.png.*(corrupt|truncated)"):
        list(load_benchmark("loveda", loveda, "train", streaming=True))
    oem = make("openearthmap", tmp_path / "o")
    _truncate(oem / "kyoto" / "labels" / "kyoto_2.tif")
    with pytest.raises(DataFileError, match=r"kyoto/labels/kyoto_2\.tif.*(corrupt|truncated)"):
        load("openearthmap", oem, "train", tmp_path)


def test_image_and_mask_of_different_sizes(tmp_path):
    oem = make("openearthmap", tmp_path / "o")
    label = oem / "aachen" / "labels" / "aachen_2.tif"
    Image.fromarray(np.zeros((SIZE, SIZE - 8), np.uint8)).save(label)
    with pytest.raises(
        DataFileError, match=rf"aachen_2\.tif: label is {SIZE - 8}x{SIZE} .*images/aachen_2\.tif is {SIZE}x{SIZE}"
    ):
        list(load_benchmark("openearthmap", oem, "train", streaming=True))


def test_out_of_range_raw_label_values(tmp_path):
    oem = make("openearthmap", tmp_path / "o")
    Image.fromarray(np.full((SIZE, SIZE), 9, np.uint8)).save(oem / "aachen" / "labels" / "aachen_1.tif")
    with pytest.raises(DataFileError, match=rf"aachen_1\.tif.*outside 0\.\.8.*9 x {SIZE * SIZE}"):
        list(load_benchmark("openearthmap", oem, "train", streaming=True))
    loveda = make("loveda", tmp_path / "l")
    Image.fromarray(np.full((SIZE, SIZE), 8, np.uint8)).save(loveda / "Val" / "Rural" / "masks_png" / "4.png")
    with pytest.raises(DataFileError, match=r"4\.png.*outside 0\.\.7.*8 x"):
        list(load_benchmark("loveda", loveda, "val", streaming=True))


def test_skip_policy_reports_every_skipped_image(tmp_path, caplog):
    loveda = make("loveda", tmp_path / "l")
    _truncate(loveda / "Train" / "Rural" / "masks_png" / "1.png")
    _truncate(loveda / "Train" / "Urban" / "images_png" / "3.png")
    log = tmp_path / "skipped.jsonl"
    with caplog.at_level(logging.WARNING, logger="s5_hf.data"):
        rows = list(load_benchmark("loveda", loveda, "train", streaming=True, on_error="skip", skip_log=log))
    assert [r["id"] for r in rows] == ["rural/0", "urban/2"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["id"], Path(r["file"]).name) for r in records] == [("rural/1", "1.png"), ("urban/3", "3.png")]
    assert all(r["source"] == "loveda" and r["reason"] for r in records)
    text = caplog.text
    assert "skipped rural/1" in text and "(2 skipped so far" in text
    assert "2 image(s) skipped so far in this process: rural/1, urban/3" in text
    with pytest.raises(ValueError, match="on_error"):
        load_benchmark("loveda", loveda, "train", on_error="ignore")


# -- synthetic data ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MAKERS))
def test_fake_images_determine_their_labels(name, roots, tmp_path):
    """The fake data is learnable: the nearest class colour recovers (almost) every label pixel."""
    split = "test" if name in ("vaihingen", "potsdam") else "val"
    options = {"patch_size": None} if name == "isaid" else {}
    rows = rows_of(load_benchmark(name, roots[name], split, streaming=True, **options))
    num_classes = {"vaihingen": 6, "potsdam": 6, "loveda": 7, "openearthmap": 9, "isaid": 16}[name]
    colors = fake.class_colors(num_classes).astype(np.float64)
    correct = total = 0
    for row in rows:
        valid = row["mask"] != 255
        distances = ((row["image"][valid][:, None, :] - colors[None]) ** 2).sum(-1)
        correct += int((distances.argmin(1) == row["mask"][valid]).sum())
        total += int(valid.sum())
    assert total and correct / total > 0.99
    assert len(np.unique(np.concatenate([r["mask"].ravel() for r in rows]))) >= min(num_classes, 5)


def test_fake_data_is_deterministic(tmp_path):
    a, b, c = (
        fake.make_fake_loveda(tmp_path / n, num_images=1, size=32, seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2))
    )
    relative = "Train/Urban/images_png/1.png"
    assert (a / relative).read_bytes() == (b / relative).read_bytes() != (c / relative).read_bytes()


def test_fake_unlabeled_pool_layout(tmp_path):
    root = fake.make_fake_unlabeled_pool(tmp_path / "pool", num_images=8, size=32, seed=0, ood_fraction=0.25)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert len(files) == 8
    assert {f.split("/")[0] for f in files} == {"millionaid", "samrs", "star"}
    assert all(f.endswith(".jpg") == f.startswith("millionaid/") for f in files)
    with Image.open(root / "millionaid" / "millionaid_00000.jpg") as image:
        assert image.format == "JPEG" and image.size == (32, 32) and image.mode == "RGB"

    # Every 4th image (index 3, 7) is noise: far more distinct colours than a scene of flat shapes.
    def colors(path):
        return len(np.unique(np.asarray(Image.open(path)).reshape(-1, 3) // 32, axis=0))

    assert colors(root / "millionaid" / "millionaid_00003.jpg") > 2 * colors(
        root / "millionaid" / "millionaid_00000.jpg"
    )
