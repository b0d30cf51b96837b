"""Small fake copies of the benchmarks, in exactly their owners' layouts (TorchGeo style), for tests and
tiny end-to-end training runs.

Every image is a scene of class-coloured shapes: each class has one fixed image colour (plus a little
noise), so a model learns the image -> label relation in a few steps and mIoU must rise far above chance.
Everything depends only on `seed` and the file stem: `fake_sample` recomputes the pixels and class ids the
reader must return for any written image, without reading the files.

Folder/file names, colour codes and raw label values are those of the real releases; ISPRS tiles and
OpenEarthMap files are GeoTIFFs (written with Pillow's raw TIFF tags: ModelPixelScale, ModelTiepoint and
GeoKeyDirectory).
"""

from __future__ import annotations

import colorsys
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin, TiffTags

from ..label_sets import ISPRS_CLUTTER_COLOR, ISPRS_PALETTE, VOID_ID, get_label_set
from .isprs import official_split

#: Number of classes drawn in each fake dataset (ISPRS: the 5 classes + clutter).
_SCENE_CLASSES = {"vaihingen": 6, "potsdam": 6, "loveda": 7, "openearthmap": 9, "isaid": 16}
#: Ground sampling distance (m) and EPSG code written into the fake GeoTIFFs.
_GEO = {"vaihingen": (0.09, 32632), "potsdam": (0.05, 32633), "openearthmap": (0.5, 32654)}
_NOISE_STD = 6.0


@dataclass
class FakeSample:
    """What a reader must return for one fake image: its RGB pixels and class ids (reader convention:
    ISPRS clutter 5, boundary/no-data 255, LoveDA shifted to 0..6)."""

    image: np.ndarray
    mask: np.ndarray


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 image colour of each class: evenly spaced hues, alternating brightness."""
    colors = [colorsys.hsv_to_rgb(k / num_classes, 0.85, 0.95 if k % 2 == 0 else 0.55) for k in range(num_classes)]
    return np.round(np.array(colors) * 255).astype(np.uint8)


def _rng(name: str, stem: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{name}/{stem}".encode())])


def _scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    background: int,
    classes: Sequence[int],
    num_shapes: int,
    scale: float,
) -> np.ndarray:
    """Class ids: a background class with rectangles and ellipses of random classes drawn over it."""
    ids = np.full((height, width), background, dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    for _ in range(num_shapes):
        half_h = max(2, int(rng.uniform(0.4, 1.0) * scale * height / 2))
        half_w = max(2, int(rng.uniform(0.4, 1.0) * scale * width / 2))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        class_id = classes[rng.integers(0, len(classes))]
        if rng.random() < 0.5:
            inside = (abs(ys - cy) <= half_h) & (abs(xs - cx) <= half_w)
        else:
            inside = ((ys - cy) / half_h) ** 2 + ((xs - cx) / half_w) ** 2 <= 1
        ids[inside] = class_id
    return ids


def _render(rng: np.random.Generator, ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Image of a scene: each class's colour plus Gaussian noise; void pixels are black (no data)."""
    colors = np.concatenate([class_colors(num_classes), np.zeros((256 - num_classes, 3), np.uint8)])
    noise = rng.normal(0.0, _NOISE_STD, ids.shape + (3,))
    return np.clip(colors[ids].astype(np.float64) + noise, 0, 255).astype(np.uint8)


def boundary(ids: np.ndarray) -> np.ndarray:
    """Pixels with a differently labelled 8-neighbour: what the eroded ISPRS ground truth blacks out."""
    padded = np.pad(ids, 1, mode="edge")
    height, width = ids.shape
    edge = np.zeros(ids.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= padded[dy : dy + height, dx : dx + width] != ids
    return edge


def fake_sample(name: str, tile_id: str, size: int = 64, seed: int = 0, *, eroded: bool = False) -> FakeSample:
    """The image and the class ids a reader must return for the fake image `tile_id` of dataset `name`
    (the reader's tile id: ``top_mosaic_09cm_area1``, ``top_potsdam_2_10``, ``urban/1366``, ``aachen_1``,
    ``P0001``), as written by the `make_fake_*` function called with the same `size` and `seed`.

    Args:
        eroded: ISPRS only: the ids of the eroded ground truth (boundary pixels 255).
    """
    name = name.lower()
    if name not in _SCENE_CLASSES:
        raise ValueError(f"No fake dataset {name!r}; valid: {', '.join(_SCENE_CLASSES)}")
    stem = tile_id.rsplit("/", 1)[-1]
    rng = _rng(name, stem, seed)
    num_classes = _SCENE_CLASSES[name]
    if name in ("vaihingen", "potsdam"):
        # Tiles of slightly different sizes, like the real Vaihingen areas.
        height, width = size + int(rng.integers(0, size // 4 + 1)), size + int(rng.integers(0, size // 4 + 1))
        ids = _scene(rng, height, width, int(rng.integers(0, 4)), range(6), num_shapes=12, scale=0.35)
        ids[: max(2, height // 8), : max(2, width // 8)] = 5  # every tile has some clutter
        image = _render(rng, ids, num_classes)
        if eroded:
            ids = np.where(boundary(ids), VOID_ID, ids).astype(np.uint8)
        return FakeSample(image, ids)
    if name == "loveda":
        raw = _scene(rng, size, size, int(rng.integers(1, 8)), range(1, 8), num_shapes=12, scale=0.35)
        raw[:, : int(rng.integers(0, size // 4 + 1))] = 0  # a no-data strip (0 px wide for some images)
        ids = np.where(raw == 0, VOID_ID, raw - 1).astype(np.uint8)
        return FakeSample(_render(rng, ids, num_classes), ids)
    if name == "openearthmap":
        ids = _scene(rng, size, size, int(rng.integers(0, 9)), range(9), num_shapes=14, scale=0.35)
        return FakeSample(_render(rng, ids, num_classes), ids)
    # iSAID: scenes of varied size, mostly background with small objects.
    height, width = (int(rng.integers(size // 2, size * 3 // 2 + 1)) for _ in range(2))
    ids = _scene(rng, height, width, 0, range(1, 16), num_shapes=max(4, height * width // 256), scale=0.15)
    return FakeSample(_render(rng, ids, num_classes), ids)


def _color_code(ids: np.ndarray, color_of: dict[int, tuple[int, int, int]]) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    for class_id, color in color_of.items():
        table[class_id] = color
    return table[ids]


def write_geotiff(path: Path, pixels: np.ndarray, pixel_size: float, epsg: int, origin=(500000.0, 5400000.0)) -> None:
    """An 8-bit GeoTIFF (north-up, `pixel_size` metres, projected CRS `epsg`) written with Pillow."""
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[33550] = (pixel_size, pixel_size, 0.0)  # ModelPixelScaleTag
    tags.tagtype[33550] = TiffTags.DOUBLE
    tags[33922] = (0.0, 0.0, 0.0, origin[0], origin[1], 0.0)  # ModelTiepointTag
    tags.tagtype[33922] = TiffTags.DOUBLE
    # GeoKeyDirectory: version 1.1.0, 3 keys: model type projected, raster pixel-is-area, projected CRS.
    tags[34735] = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg)
    tags.tagtype[34735] = TiffTags.SHORT
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="TIFF", tiffinfo=tags)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def _make_fake_isprs(name: str, root: Path, size: int, seed: int, dirs: tuple[str, str, str], names) -> Path:
    image_dir, label_dir, eroded_dir = dirs
    pixel_size, epsg = _GEO[name]
    colors = dict(enumerate(ISPRS_PALETTE)) | {5: ISPRS_CLUTTER_COLOR, VOID_ID: (0, 0, 0)}
    for stem in official_split(name, "train") + official_split(name, "test"):
        image_name, label_name, eroded_name = names(stem)
        full = fake_sample(name, stem, size, seed)
        eroded = fake_sample(name, stem, size, seed, eroded=True)
        write_geotiff(root / image_dir / image_name, full.image, pixel_size, epsg)
        write_geotiff(root / label_dir / label_name, _color_code(full.mask, colors), pixel_size, epsg)
        write_geotiff(root / eroded_dir / eroded_name, _color_code(eroded.mask, colors), pixel_size, epsg)
    return root


def make_fake_vaihingen(root: str | os.PathLike, size: int = 64, seed: int = 0) -> Path:
    """A fake ISPRS Vaihingen with all 33 official areas (tiles of `size` to 1.25 x `size` px): IRRG image
    GeoTIFFs in ``top/``, colour-coded labels in ``gts_for_participants/`` and eroded labels (black
    boundaries) in ``gts_eroded_for_participants/``. Every area is written because a split needs all of
    its areas."""
    return _make_fake_isprs(
        "vaihingen",
        Path(root),
        size,
        seed,
        ("top", "gts_for_participants", "gts_eroded_for_participants"),
        lambda stem: (f"{stem}.tif", f"{stem}.tif", f"{stem}_noBoundary.tif"),
    )


def make_fake_potsdam(root: str | os.PathLike, size: int = 64, seed: int = 0) -> Path:
    """A fake ISPRS Potsdam with all 38 official tiles: ``2_Ortho_RGB/``, ``5_Labels_all/`` and
    ``5_Labels_all_noBoundary/`` (see `make_fake_vaihingen`)."""
    return _make_fake_isprs(
        "potsdam",
        Path(root),
        size,
        seed,
        ("2_Ortho_RGB", "5_Labels_all", "5_Labels_all_noBoundary"),
        lambda stem: (f"{stem}_RGB.tif", f"{stem}_label.tif", f"{stem}_label_noBoundary.tif"),
    )


def make_fake_loveda(root: str | os.PathLike, num_images: int = 2, size: int = 64, seed: int = 0) -> Path:
    """A fake LoveDA: `num_images` PNGs per split (Train/Val/Test) and domain (Rural/Urban), numbered
    consecutively as in the release; masks hold raw values (0 = no-data, 1..7 = classes); Test has none."""
    root = Path(root)
    number = 0
    for split in ("Train", "Val", "Test"):
        for domain in ("Rural", "Urban"):
            for _ in range(num_images):
                sample = fake_sample("loveda", str(number), size, seed)
                _write_png(root / split / domain / "images_png" / f"{number}.png", sample.image)
                if split != "Test":
                    raw = np.where(sample.mask == VOID_ID, 0, sample.mask + 1).astype(np.uint8)
                    _write_png(root / split / domain / "masks_png" / f"{number}.png", raw)
                number += 1
    return root


def make_fake_openearthmap(
    root: str | os.PathLike,
    regions: Sequence[str] = ("aachen", "kyoto", "san_juan"),
    num_images: int = 5,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A fake OpenEarthMap: `num_images` GeoTIFFs per region (``<region>/images/<region>_<n>.tif``), image
    n going to train, train, train, val, test in turn; labels (raw 0..8) for train and val only, as
    published; ``train.txt``/``val.txt``/``test.txt`` at the root."""
    root = Path(root)
    pixel_size, epsg = _GEO["openearthmap"]
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for region in regions:
        for n in range(1, num_images + 1):
            split = ("train", "train", "train", "val", "test")[(n - 1) % 5]
            name = f"{region}_{n}.tif"
            sample = fake_sample("openearthmap", Path(name).stem, size, seed)
            write_geotiff(root / region / "images" / name, sample.image, pixel_size, epsg)
            if split != "test":
                write_geotiff(root / region / "labels" / name, sample.mask, pixel_size, epsg)
            lists[split].append(name)
    for split, names in lists.items():
        (root / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    return root


def make_fake_isaid(
    root: str | os.PathLike, num_images: tuple[int, int] = (3, 2), size: int = 96, seed: int = 0
) -> Path:
    """A fake iSAID: (train, val) scenes ``<split>/images/P<nnnn>.png`` of `size`/2 to 1.5 x `size` px, their
    colour-coded semantic masks ``<split>/Semantic_masks/images/P<nnnn>_instance_color_RGB.png`` and, as in
    the release, instance-id masks ``P<nnnn>_instance_id_RGB.png`` beside them (not read)."""
    root = Path(root)
    colors = dict(enumerate(get_label_set("isaid").palette))
    number = 0
    for split, count in zip(("train", "val"), num_images, strict=True):
        for _ in range(count):
            stem = f"P{number:04d}"
            sample = fake_sample("isaid", stem, size, seed)
            _write_png(root / split / "images" / f"{stem}.png", sample.image)
            masks = root / split / "Semantic_masks" / "images"
            _write_png(masks / f"{stem}_instance_color_RGB.png", _color_code(sample.mask, colors))
            instance = np.stack([sample.mask, np.zeros_like(sample.mask), np.zeros_like(sample.mask)], axis=-1)
            _write_png(masks / f"{stem}_instance_id_RGB.png", instance)
            number += 1
    return root


def make_fake_unlabeled_pool(
    root: str | os.PathLike,
    num_images: int = 12,
    size: int = 64,
    sources: Sequence[str] = ("millionaid", "samrs", "star"),
    seed: int = 0,
    ood_fraction: float = 0.25,
) -> Path:
    """A folder of unlabeled RGB images, one subfolder per source: ``<root>/<source>/<source>_<nnnnn>.<ext>``
    (JPEG for MillionAID, as it ships, PNG otherwise), `num_images` in total spread over the sources.

    Most images are iSAID-like scenes (same class colours as `make_fake_isaid`, so a model trained on the
    fake iSAID is confident on them); an `ood_fraction` of them is plain noise, which such a model finds
    uncertain, so entropy ranking has something to find. Image i is noise when
    ``floor((i + 1) * ood_fraction) > floor(i * ood_fraction)``: evenly spread, deterministic.
    """
    root = Path(root)
    for i in range(num_images):
        source = sources[i % len(sources)]
        rng = _rng("pool", f"{source}_{i}", seed)
        if int((i + 1) * ood_fraction) > int(i * ood_fraction):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:
            ids = _scene(rng, size, size, 0, range(1, 16), num_shapes=max(4, size * size // 256), scale=0.15)
            pixels = _render(rng, ids, _SCENE_CLASSES["isaid"])
        extension = "jpg" if source == "millionaid" else "png"
        path = root / source / f"{source}_{i:05d}.{extension}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, **({"quality": 95} if extension == "jpg" else {}))
    return root


#: Value range each dtype's fake bands are drawn from (16-bit: reflectance-like values, as Sentinel-2 L2A).
_BAND_RANGES = {"uint8": (20, 235), "uint16": (200, 6000), "int16": (-500, 4000), "float32": (0.02, 0.9)}


def make_fake_labeled_folder(
    root: str | os.PathLike,
    num_images: int = 6,
    size: int = 64,
    bands: int = 3,
    dtype: str = "uint8",
    num_classes: int = 4,
    *,
    layout: str = "folders",
    image_format: str = "tif",
    nodata: float | None = None,
    nodata_border: int = 0,
    seed: int = 0,
) -> Path:
    """A user's labeled dataset of `num_images` image/mask pairs (`s5_hf.data.folders` layouts), and its classes
    in ``<root>/id2label.json``.

    Each class has a fixed value per band (spread over the dtype's range) plus noise, so the image -> label relation
    is learnable in a few steps. With `nodata_border` px, the left columns of every image hold `nodata` in every band
    (the GeoTIFF declares it) and the mask there holds class 0: a reader that ignored nodata would train on them.

    Args:
        layout: ``"folders"`` (images/ + masks/), ``"splits"`` (train/ and val/, the last third in val) or
            ``"csv"`` (files in data/, pairs listed in ``pairs.csv`` with a split column).
        image_format: ``"tif"`` (GeoTIFF with a CRS, written with rasterio) or ``"png"`` (8-bit 3-band only).
    """
    root = Path(root)
    rng = np.random.default_rng([seed, num_classes, bands])
    low, high = _BAND_RANGES[dtype]
    signature = rng.uniform(low, high, (num_classes, bands))
    rows = []
    for index in range(num_images):
        stem = f"tile_{index:03d}"
        sample_rng = _rng("folder", stem, seed)
        ids = _scene(sample_rng, size, size, int(sample_rng.integers(0, num_classes)), range(num_classes),
                     num_shapes=8, scale=0.4)
        noise = sample_rng.normal(0.0, 0.03 * (high - low), (size, size, bands))
        pixels = np.clip(signature[ids] + noise, low, high).astype(dtype)
        if nodata_border:
            pixels[:, :nodata_border] = nodata
            ids[:, :nodata_border] = 0
        split = "val" if layout == "splits" and index >= num_images - max(1, num_images // 3) else "train"
        base = root / (split if layout == "splits" else "data" if layout == "csv" else "")
        image_dir, mask_dir = (base, base) if layout == "csv" else (base / "images", base / "masks")
        suffix = ".tif" if image_format == "tif" else ".png"
        image_path = image_dir / (f"{stem}{suffix}" if layout != "csv" else f"{stem}_image{suffix}")
        mask_path = mask_dir / (f"{stem}.png" if layout != "csv" else f"{stem}_mask.png")
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        if image_format == "tif":
            write_multiband_geotiff(image_path, pixels, nodata=nodata)
        else:
            if dtype != "uint8" or bands != 3:
                raise ValueError("PNG fakes are 8-bit RGB; use image_format='tif' for other bands or dtypes.")
            Image.fromarray(pixels).save(image_path)
        Image.fromarray(ids).save(mask_path)
        rows.append((image_path.relative_to(root).as_posix(), mask_path.relative_to(root).as_posix(), split))
    if layout == "csv":
        lines = ["image,mask,split"] + [",".join(row) for row in rows]
        (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    (root / "id2label.json").write_text(json.dumps({str(k): f"class_{k}" for k in range(num_classes)}))
    return root


def write_multiband_geotiff(path: str | os.PathLike, pixels: np.ndarray, *, nodata: float | None = None,
                            epsg: int = 32632, pixel_size: float = 10.0) -> None:
    """An (H, W, C) array as a C-band GeoTIFF (UTM CRS, `nodata` declared if given), through rasterio."""
    import rasterio
    from rasterio.transform import Affine

    height, width, count = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count, dtype=pixels.dtype.name,
                       crs=f"EPSG:{epsg}", transform=Affine(pixel_size, 0.0, 500000.0, 0.0, -pixel_size, 5400000.0),
                       nodata=nodata) as dst:
        dst.write(pixels.transpose(2, 0, 1))


__all__ = [
    "FakeSample",
    "make_fake_labeled_folder",
    "write_multiband_geotiff",
    "boundary",
    "class_colors",
    "fake_sample",
    "make_fake_isaid",
    "make_fake_loveda",
    "make_fake_openearthmap",
    "make_fake_potsdam",
    "make_fake_unlabeled_pool",
    "make_fake_vaihingen",
    "write_geotiff",
]
