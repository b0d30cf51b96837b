"""Large-scene inference: sliding windows with smooth blending, bounded memory, PNG/JPEG/TIFF/GeoTIFF in and out.

    s5-segment scene.tif mask.tif --model path/or/hub-id --task potsdam --color
    s5-segment scenes/ masks/ --model path/or/hub-id --task loveda          (folder in -> folder out)

How a scene is predicted:

- Windows of `window` px (a multiple of the patch size) overlap by `overlap` of their size; the last window of a
  row/column is moved back to end at the scene's edge. Scenes smaller than a window use one window of the scene's
  size, padded to a multiple of the patch size (the padding is never part of the output).
- Each window's softmax probabilities are multiplied by a 2-D Hann weight, sin^2(pi (i + 0.5) / n) per axis
  (positive everywhere, highest at the centre, where the model has the most context), and summed per pixel; the
  label is the argmax of the sum. A pixel seen by one window only gets exactly that window's argmax.
- The scene is processed in horizontal strips, one row of windows at a time. Only the accumulators of one window
  height of rows are kept (classes x window x scene width floats), and rows no later window touches are written
  out at once, so memory does not grow with the scene's height. GeoTIFFs are read and written by window with
  rasterio (extra `geo`); PNG/JPEG are decoded whole by Pillow, one byte per pixel and band, then cut into
  windows. PNG output is streamed row by row (our own minimal PNG writer); TIFF output without rasterio is
  assembled in memory (one byte per pixel) and written by Pillow.

Where outputs go: an output that resolves to an input file (the same file, its folder in folder mode, or a
symlink to either) is refused, and so is any path inside the installed s5_hf package or site-packages; an existing
output is replaced only with `--overwrite`. Every output is checked before anything is written. Without an output
path, the mask goes to the current folder (`<input stem>_mask.<ext>`, or `<input folder name>_masks/`).

Outputs: label maps hold class ids (0..K-1) and 255 where the input is nodata. PNG masks are palette images
(pixel values = class ids, shown in the dataset's colours); GeoTIFF masks keep the input's CRS and transform and
carry the palette as a colour map. `--color` also writes `<name>_color.png`: the colour mask over the scene with
a legend.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import struct
import sys
import sysconfig
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from . import files
from .image_processing_s5 import S5ImageProcessor
from .label_sets import VOID_ID
from .visualize import blend_rows, legend, task_palette

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# TIFF tags that georeference an image (GeoKeyDirectory, ModelPixelScale, ModelTiepoint, ModelTransformation).
GEOTIFF_TAGS = (34735, 33550, 33922, 34264)

try:  # optional extra `geo`
    import rasterio
    from rasterio.windows import Window
except ImportError:  # pragma: no cover - exercised where rasterio is not installed
    rasterio = None


class SceneError(ValueError):
    """A scene cannot be read or does not fit the model; the message names the file."""


class OutputError(ValueError):
    """An output path is refused: it is an input, an existing file (without overwrite), or inside the installed
    package; the message names the path."""


# ----------------------------------------------------------------------------------------------------------------
# Reading scenes
# ----------------------------------------------------------------------------------------------------------------
class Scene:
    """A raster read by window: `read(top, left, height, width)` -> (bands, height, width) array."""

    name: str
    height: int
    width: int
    bands: int
    dtype: np.dtype
    crs = None
    transform = None
    # GeoTIFF tags Pillow saw but cannot turn into a CRS (rasterio missing): such a scene cannot keep them.
    unreadable_georeferencing = False

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def valid(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        """Boolean (height, width) mask of pixels holding data, or None when every pixel does."""
        return None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def close(self) -> None:
        pass


class ArrayScene(Scene):
    """A scene already in memory: (height, width, bands) or (height, width) array, or a PIL image."""

    def __init__(self, array: np.ndarray, name: str = "<array>"):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise SceneError(f"{name}: expected an image of shape (height, width[, bands]), got {array.shape}.")
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise SceneError(f"{name}: the image is empty ({array.shape[0]}x{array.shape[1]} pixels).")
        self.array, self.name = array, name
        self.height, self.width, self.bands = array.shape
        self.dtype = array.dtype

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return np.moveaxis(self.array[top : top + height, left : left + width], -1, 0)


def _usable(image: Image.Image, name: str) -> Image.Image:
    """`image` in a mode whose pixels are band values (palette images become RGB/RGBA)."""
    if image.mode == "P":  # indexed colour: its colours are the image
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        raise SceneError(f"{name}: colour mode {image.mode} is not supported; convert the image to RGB first.")
    return image


class PILScene(Scene):
    """A PIL image (PNG, JPEG, TIFF files are decoded whole by Pillow), cut into windows with `crop`."""

    def __init__(self, image: Image.Image, name: str = "<PIL image>"):
        self.image, self.name = _usable(image, name), name
        self.width, self.height = self.image.size
        if not self.width or not self.height:
            raise SceneError(f"{name}: the image is empty ({self.height}x{self.width} pixels).")
        self.bands = len(self.image.getbands())
        self.dtype = np.asarray(self.image.crop((0, 0, 1, 1))).dtype

    @classmethod
    def from_path(cls, path: Path) -> PILScene:
        try:
            with Image.open(path) as image:
                image.load()
                scene = cls(image, str(path))
                scene.unreadable_georeferencing = bool(set(GEOTIFF_TAGS) & set(getattr(image, "tag_v2", {}) or {}))
        except Image.DecompressionBombError as error:
            raise SceneError(
                f"{path}: too large for Pillow to decode safely ({error}). Convert it to a (tiled) GeoTIFF, which is "
                f"read by window with rasterio (pip install 's5-hf[geo]'), or raise PIL.Image.MAX_IMAGE_PIXELS."
            ) from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise SceneError(f"{path}: cannot read the image ({type(error).__name__}: {error}).") from error
        return scene

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        window = np.asarray(self.image.crop((left, top, left + width, top + height)))
        return window[None] if window.ndim == 2 else np.moveaxis(window, -1, 0)


class RasterioScene(Scene):
    """A GeoTIFF (or any GDAL raster) read window by window with rasterio."""

    def __init__(self, path: Path):
        try:
            self.dataset = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise SceneError(f"{path}: cannot read the raster ({error}).") from error
        self.name = str(path)
        self.height, self.width, self.bands = self.dataset.height, self.dataset.width, self.dataset.count
        if len(set(self.dataset.dtypes)) != 1:
            raise SceneError(f"{path}: bands of different data types ({self.dataset.dtypes}) are not supported.")
        self.dtype = np.dtype(self.dataset.dtypes[0])
        self.crs, self.transform = self.dataset.crs, self.dataset.transform
        # Only declared nodata (or an internal/alpha mask) makes pixels void; plain imagery has no mask.
        self.has_mask = any(
            rasterio.enums.MaskFlags.all_valid not in flags for flags in self.dataset.mask_flag_enums
        )

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        try:
            return self.dataset.read(window=Window(left, top, width, height))
        except rasterio.errors.RasterioIOError as error:
            raise SceneError(f"{self.name}: reading rows {top}..{top + height} failed ({error}).") from error

    def valid(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        if not self.has_mask:
            return None
        return self.dataset.dataset_mask(window=Window(left, top, width, height)) > 0

    def close(self) -> None:
        self.dataset.close()


def open_scene(source: str | os.PathLike | np.ndarray | Image.Image | Scene) -> Scene:
    """A `Scene` for a path (PNG/JPEG/TIFF; TIFFs through rasterio when installed), an array or a PIL image.
    A `Scene` (e.g. your own reader for another format) is returned as it is."""
    if isinstance(source, Scene):
        return source
    if isinstance(source, Image.Image):
        return PILScene(source)
    if isinstance(source, np.ndarray):
        return ArrayScene(source)
    path = Path(source)
    if not path.is_file():
        raise SceneError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise SceneError(f"{path}: the file is empty (0 bytes).")
    if path.suffix.lower() in TIFF_SUFFIXES and rasterio is not None:
        return RasterioScene(path)
    return PILScene.from_path(path)


# ----------------------------------------------------------------------------------------------------------------
# Compiled forward
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Logits:
    logits: torch.Tensor


class CompiledSegmenter(torch.nn.Module):
    """`model` with its single-task forward (`pixel_values -> logits`) compiled by `torch.compile`, one compiled
    graph per task, for the sliding-window predictor (`segment_scene(CompiledSegmenter(model), ...)`, CLI
    `--torch-compile`). Called like the model, `(pixel_values, task=name)`, it returns an object with `.logits`.

    The input checks run eagerly first; the graph starts at the patch embedding, with the task fixed, so the
    host-side routing of a mixed batch (a data-dependent read of the task ids) is not in it. Windows all have
    one shape (edge windows are padded), so `dynamic=False` compiles once per batch size: a last, smaller batch
    costs one more compilation.
    """

    def __init__(self, model, **compile_options):
        super().__init__()
        self.model = model
        self.config = model.config
        self.compile_options = {"dynamic": False, **compile_options}
        self._compiled: dict[int, object] = {}

    def _single_task_logits(self, task: int, pixel_values: torch.Tensor) -> torch.Tensor:
        from .modeling_s5 import TaskRouting

        routing = TaskRouting.whole_batch(task)
        outputs = self.model.s5(pixel_values, routing=routing, return_dict=True, skip_neck=True)
        return self.model._logits(outputs.feature_maps, routing, None, pixel_values.shape[-2:])

    def forward(self, pixel_values: torch.Tensor, task: str | None = None) -> _Logits:
        from .modeling_s5 import check_pixel_values

        config = self.config
        index = config.task_index(task if task is not None else config.default_task)
        check_pixel_values(pixel_values, config.num_channels, config.patch_size)
        if index not in self._compiled:
            self._compiled[index] = torch.compile(
                lambda pixels, index=index: self._single_task_logits(index, pixels), **self.compile_options
            )
        return _Logits(self._compiled[index](pixel_values))


# ----------------------------------------------------------------------------------------------------------------
# Window geometry and blending
# ----------------------------------------------------------------------------------------------------------------
def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of length `window` covering `size` pixels; the last one ends at the edge."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


def hann_weights(height: int, width: int) -> np.ndarray:
    """2-D weight sin^2(pi (i + 0.5) / n) per axis: positive everywhere, 1 near the centre."""
    def axis(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    return np.outer(axis(height), axis(width)).astype(np.float32)


@dataclass(frozen=True)
class Normalisation:
    """How raw band values become model inputs: x * rescale_factor, then (x - mean) / std per band."""

    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_processor(cls, processor: S5ImageProcessor, rescale_factor: float | None = None) -> Normalisation:
        if rescale_factor is not None:
            scale = rescale_factor
        else:
            scale = processor.rescale_factor if processor.do_rescale else 1.0
        if processor.do_normalize:
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        else:
            mean, std = (0.0,), (1.0,)
        return cls(float(scale), mean, std)

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(raw)).float() * self.rescale_factor
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (pixels - mean) / std


@dataclass
class SlidingWindow:
    """Sliding-window settings: window size (px, a multiple of the patch size), overlap fraction, batch size."""

    window: int = 512
    overlap: float = 0.25
    batch_size: int = 4

    def check(self, patch_size: int) -> None:
        if self.window <= 0 or self.window % patch_size:
            raise ValueError(f"window must be a positive multiple of the patch size {patch_size}, got {self.window}.")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


def _select_bands(scene: Scene, bands: Sequence[int] | None, expected: int) -> list[int]:
    """0-based band indices to feed the model; `bands` are 1-based as in GDAL and the CLI."""
    if bands is None:
        if scene.bands != expected:
            raise SceneError(
                f"{scene.name}: has {scene.bands} band(s) but the model expects {expected}. Select bands with "
                f"bands=[...] (CLI: --bands, 1-based), e.g. --bands {','.join(str(b) for b in range(1, expected + 1))}."
            )
        return list(range(expected))
    bands = [int(b) for b in bands]
    if len(bands) != expected:
        raise SceneError(f"{scene.name}: {len(bands)} band(s) selected ({bands}) but the model expects {expected}.")
    bad = [b for b in bands if not 1 <= b <= scene.bands]
    if bad:
        raise SceneError(f"{scene.name}: band(s) {bad} do not exist; the image has bands 1..{scene.bands}.")
    return [b - 1 for b in bands]


def _check_scale(scene: Scene, normalisation: Normalisation, explicit: bool) -> None:
    # 8-bit scaling applied to 16-bit or float imagery gives garbage predictions without any error: refuse.
    if scene.dtype != np.uint8 and not explicit and math.isclose(normalisation.rescale_factor, 1 / 255):
        raise SceneError(
            f"{scene.name}: holds {scene.dtype} values but the processor scales by 1/255 (8-bit imagery). Pass "
            f"rescale_factor (CLI: --rescale-factor) mapping the data to [0, 1], e.g. 1/65535 for 16-bit data."
        )


@torch.inference_mode()
def iter_label_strips(
    model,
    scene: Scene,
    task: str | None = None,
    *,
    processor: S5ImageProcessor | None = None,
    sliding: SlidingWindow | None = None,
    bands: Sequence[int] | None = None,
    rescale_factor: float | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Predict `scene` strip by strip: yields `(first_row, labels)` with `labels` a (rows, width) uint8 array.

    Rows come in order, each exactly once. Windows go through the model `sliding.batch_size` at a time, in
    row-major order and across window rows, so a batch fills up even where a scene is only a window or two wide
    (evaluation images); the blended sums are added in the same order whatever the batch size. Memory:
    classes x band x width float32 accumulators, the band being the rows that one batch of windows spans (one
    window's height when a batch stays within a window row), whatever the scene's height.
    """
    config = model.config
    sliding = sliding or SlidingWindow()
    sliding.check(config.patch_size)
    task = config.tasks[config.task_index(task if task is not None else config.default_task)]
    num_classes = len(task["id2label"])
    if num_classes >= VOID_ID:
        raise ValueError(f"Task {task['name']!r} has {num_classes} classes; uint8 label maps hold at most {VOID_ID}.")
    processor = processor or S5ImageProcessor()
    normalisation = Normalisation.from_processor(processor, rescale_factor)
    if len(normalisation.mean) not in (1, config.num_channels):
        raise ValueError(
            f"The processor normalises {len(normalisation.mean)} bands but the model takes {config.num_channels}."
        )
    channels = _select_bands(scene, bands, config.num_channels)
    _check_scale(scene, normalisation, rescale_factor is not None)

    patch = config.patch_size
    height, width = scene.height, scene.width
    win_h = min(sliding.window, math.ceil(height / patch) * patch)
    win_w = min(sliding.window, math.ceil(width / patch) * patch)
    rows = window_starts(height, win_h, max(1, round(win_h * (1 - sliding.overlap))))
    cols = window_starts(width, win_w, max(1, round(win_w * (1 - sliding.overlap))))
    windows = [(top, left) for top in rows for left in cols]  # row-major: rows become final in order
    batches = [windows[i : i + sliding.batch_size] for i in range(0, len(windows), sliding.batch_size)]
    weights = torch.from_numpy(hann_weights(win_h, win_w))
    device = next(model.parameters()).device

    # The band starts at the top of the first window not yet predicted and must hold every row of the next batch.
    band_h = min(height, max(batch[-1][0] + win_h - batch[0][0] for batch in batches))
    accumulator = np.zeros((num_classes, band_h, width), dtype=np.float32)
    band_top = 0
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(windows), unit="window", desc=Path(scene.name).name, disable=not progress)
    try:
        for index, batch_windows in enumerate(batches):
            batch = torch.zeros(len(batch_windows), config.num_channels, win_h, win_w)
            for i, (top, left) in enumerate(batch_windows):
                h, w = min(win_h, height - top), min(win_w, width - left)
                raw = scene.read(top, left, h, w)[channels]
                batch[i, :, :h, :w] = normalisation(raw)  # beyond the scene: 0 = the mean colour
            logits = model(batch.to(device), task=task["name"]).logits.float().cpu()
            probabilities = torch.softmax(logits, dim=1).mul_(weights)
            for i, (top, left) in enumerate(batch_windows):
                h, w = min(win_h, height - top), min(win_w, width - left)
                rows_in_band = slice(top - band_top, top - band_top + h)
                accumulator[:, rows_in_band, left : left + w] += probabilities[i, :, :h, :w].numpy()
            bar.update(len(batch_windows))
            # Rows above the next window are final: emit them and slide the band down.
            finished = batches[index + 1][0][0] if index + 1 < len(batches) else height
            count = finished - band_top
            if count == 0:  # the batch ended inside a window row
                continue
            labels = accumulator[:, :count].argmax(axis=0).astype(np.uint8)
            valid = scene.valid(band_top, 0, count, width)
            if valid is not None:
                labels[~valid] = VOID_ID
            yield band_top, labels
            accumulator[:, : band_h - count] = accumulator[:, count:].copy()
            accumulator[:, band_h - count :] = 0
            band_top = finished
    finally:
        bar.close()
        model.train(was_training)


def segment_scene(
    model,
    scene: str | os.PathLike | np.ndarray | Image.Image | Scene,
    task: str | None = None,
    *,
    processor: S5ImageProcessor | None = None,
    window: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    bands: Sequence[int] | None = None,
    rescale_factor: float | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Label map (height, width) uint8 of a scene of any size, predicted with overlapping blended windows.

    Args:
        model: an `S5ForSemanticSegmentation` (any device; it is used in eval mode and its mode restored).
        scene: a path (PNG/JPEG/TIFF/GeoTIFF), a (height, width, bands) array of raw values, a PIL image, or a
            `Scene` (windowed reader).
        task: the dataset head (defaults to `model.config.default_task`); unknown names raise a ValueError listing
            the model's tasks.
        processor: its rescale factor and mean/std normalise the pixels (resizing is never applied: the
            scene keeps its ground sample distance); defaults to `S5ImageProcessor()`.
        window, overlap, batch_size: see `SlidingWindow`.
        bands: 1-based bands to use when the scene has more or fewer than the model's `num_channels`.
        rescale_factor: overrides the processor's (required for non-8-bit imagery, e.g. 1/65535).
    Returns:
        Class ids 0..K-1; 255 where a GeoTIFF declares nodata.
    """
    opened = open_scene(scene)
    try:
        labels = np.empty((opened.height, opened.width), dtype=np.uint8)
        for top, strip in iter_label_strips(
            model, opened, task, processor=processor, sliding=SlidingWindow(window, overlap, batch_size),
            bands=bands, rescale_factor=rescale_factor, progress=progress,
        ):
            labels[top : top + len(strip)] = strip
        return labels
    finally:
        opened.close()


# ----------------------------------------------------------------------------------------------------------------
# Writing label maps and colour images row by row
# ----------------------------------------------------------------------------------------------------------------
class RowWriter:
    """Writes an image top to bottom, a block of rows at a time, to a temporary file renamed on `close()`; an
    incomplete image is never left under the final name."""

    def __init__(self, path: Path, width: int, height: int):
        self.path, self.width, self.height = Path(path), width, height
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        if block.shape[1] != self.width or self.rows + block.shape[0] > self.height:
            raise ValueError(f"{self.path}: block of shape {block.shape} does not fit the remaining rows.")
        self._write(block)
        self.rows += block.shape[0]

    def close(self) -> Path:
        if self.rows != self.height:
            self.abort()
            raise RuntimeError(f"{self.path}: only {self.rows} of {self.height} rows were written.")
        self._finish()
        files.fsync_file(self.tmp)  # on disk before the rename makes it visible (a crash never leaves a torn mask)
        os.replace(self.tmp, self.path)
        files.fsync_directory(self.path.parent)
        return self.path

    def abort(self) -> None:
        self._release()
        self.tmp.unlink(missing_ok=True)

    def _write(self, block: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngRowWriter(RowWriter):
    """Streaming 8-bit PNG: palette (`palette` given, pixel values = indices) or RGB (blocks of shape (h, w, 3))."""

    def __init__(self, path: Path, width: int, height: int, palette: np.ndarray | None = None):
        super().__init__(path, width, height)
        self.channels = 1 if palette is not None else 3
        self.file = open(self.tmp, "wb")
        self.compressor = zlib.compressobj(6)
        colour_type = 3 if palette is not None else 2
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self.file.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)))
        if palette is not None:
            # All 256 entries, so the void id 255 (black) is a valid index too.
            table = np.zeros((256, 3), dtype=np.uint8)
            table[: len(palette)] = palette
            self.file.write(_png_chunk(b"PLTE", table.tobytes()))

    def _write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.uint8).reshape(block.shape[0], -1)
        filtered = np.zeros((block.shape[0], 1 + self.width * self.channels), dtype=np.uint8)  # filter 0 per row
        filtered[:, 1:] = block
        data = self.compressor.compress(filtered.tobytes())
        if data:
            self.file.write(_png_chunk(b"IDAT", data))

    def _finish(self) -> None:
        self.file.write(_png_chunk(b"IDAT", self.compressor.flush()))
        self.file.write(_png_chunk(b"IEND", b""))
        self.file.close()

    def _release(self) -> None:
        self.file.close()


class GeoTiffRowWriter(RowWriter):
    """Single-band uint8 GeoTIFF written by row windows with rasterio; keeps the scene's CRS and transform."""

    def __init__(self, path: Path, scene: Scene, palette: np.ndarray, class_names: Sequence[str]):
        super().__init__(path, scene.width, scene.height)
        profile = dict(driver="GTiff", width=scene.width, height=scene.height, count=1, dtype="uint8",
                       nodata=VOID_ID, compress="deflate", tiled=True, blockxsize=256, blockysize=256,
                       crs=scene.crs, transform=scene.transform)
        if scene.width < 256 or scene.height < 256:
            profile.update(tiled=False, blockxsize=None, blockysize=None)
            profile = {k: v for k, v in profile.items() if v is not None}
        self.dataset = rasterio.open(self.tmp, "w", **profile)
        self.dataset.write_colormap(1, {k: (*map(int, palette[k]), 255) for k in range(len(palette))})
        self.dataset.update_tags(1, class_names=json.dumps(list(class_names)))

    def _write(self, block: np.ndarray) -> None:
        self.dataset.write(block, 1, window=Window(0, self.rows, self.width, block.shape[0]))

    def _finish(self) -> None:
        self.dataset.close()

    def _release(self) -> None:
        self.dataset.close()


class InMemoryRowWriter(RowWriter):
    """Any format Pillow writes (used for TIFF without rasterio): assembled as one uint8 palette image."""

    def __init__(self, path: Path, width: int, height: int, palette: np.ndarray):
        super().__init__(path, width, height)
        self.array = np.empty((height, width), dtype=np.uint8)
        self.palette = palette

    def _write(self, block: np.ndarray) -> None:
        self.array[self.rows : self.rows + block.shape[0]] = block

    def _finish(self) -> None:
        image = Image.fromarray(self.array).convert("P")  # "L" -> "P" keeps the values as palette indices
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(self.palette)] = self.palette
        image.putpalette(table.tobytes())
        image.save(self.tmp, format="TIFF", compression="tiff_deflate")


class ColourComposer:
    """Writes `<name>_color.png`: the colour mask blended over the scene, with the legend to the right."""

    def __init__(self, path: Path, scene: Scene, channels: list[int], scale: float, palette: np.ndarray,
                 class_names: Sequence[str], title: str, alpha: float):
        self.scene, self.channels, self.scale, self.palette, self.alpha = scene, channels, scale, palette, alpha
        self.legend = np.asarray(legend(class_names, palette, title=title))
        self.height = max(scene.height, self.legend.shape[0])
        self.writer = PngRowWriter(path, scene.width + self.legend.shape[1], self.height)
        self.top = 0

    def _display_rgb(self, top: int, rows: int) -> np.ndarray:
        raw = self.scene.read(top, 0, rows, self.scene.width)[self.channels].astype(np.float32)
        raw = raw[:3] if raw.shape[0] >= 3 else np.repeat(raw[:1], 3, axis=0)
        return np.clip(raw * (self.scale * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    def _legend_rows(self, top: int, rows: int) -> np.ndarray:
        block = np.full((rows, self.legend.shape[1], 3), 255, dtype=np.uint8)
        visible = max(0, min(rows, self.legend.shape[0] - top))
        block[:visible] = self.legend[top : top + visible]
        return block

    def write(self, labels: np.ndarray) -> None:
        rows = labels.shape[0]
        blended = blend_rows(self._display_rgb(self.top, rows), labels, self.palette, self.alpha)
        self.writer.write(np.concatenate([blended, self._legend_rows(self.top, rows)], axis=1))
        self.top += rows

    def close(self) -> Path:
        if self.top < self.height:  # the legend is taller than the scene: white rows below it
            extra = self.height - self.top
            blank = np.full((extra, self.scene.width, 3), 255, dtype=np.uint8)
            self.writer.write(np.concatenate([blank, self._legend_rows(self.top, extra)], axis=1))
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _label_writer(path: Path, scene: Scene, palette: np.ndarray, class_names: Sequence[str]) -> RowWriter:
    suffix = path.suffix.lower()
    if suffix == ".png":
        if scene.georeferenced or scene.unreadable_georeferencing:
            logger.warning("%s: a PNG drops the georeferencing of %s; write a .tif to keep it.", path, scene.name)
        return PngRowWriter(path, scene.width, scene.height, palette=palette)
    if suffix in TIFF_SUFFIXES:
        if isinstance(scene, RasterioScene):
            return GeoTiffRowWriter(path, scene, palette, class_names)
        if scene.unreadable_georeferencing:
            raise SceneError(
                f"{scene.name}: keeping its georeferencing needs rasterio: pip install 's5-hf[geo]' "
                f"(or write a PNG mask instead)."
            )
        return InMemoryRowWriter(path, scene.width, scene.height, palette)
    raise ValueError(f"{path}: unsupported output format {suffix!r}; use .png or .tif.")


@dataclass
class SceneResult:
    source: str
    mask: Path
    color: Path | None
    height: int
    width: int
    class_counts: dict[str, int] = field(default_factory=dict)


def segment_file(
    model,
    source: str | os.PathLike | Scene,
    output: str | os.PathLike,
    task: str | None = None,
    *,
    color: str | os.PathLike | None = None,
    alpha: float = 0.6,
    processor: S5ImageProcessor | None = None,
    window: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    bands: Sequence[int] | None = None,
    rescale_factor: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SceneResult:
    """Predict the scene at `source` and write its label map to `output` (.png or .tif), row block by row block.

    With `color`, also write a colour PNG (mask over the scene with opacity `alpha`, legend on the right).
    Outputs appear only when complete. An output that is the input file (or a link to it) or lies inside the
    installed package raises `OutputError`; so does an existing output unless `overwrite`. Other arguments: see
    `segment_scene`.
    """
    config = model.config
    task_spec = config.tasks[config.task_index(task if task is not None else config.default_task)]
    class_names = [task_spec["id2label"][k] for k in range(len(task_spec["id2label"]))]
    palette = task_palette(task_spec)
    processor = processor or S5ImageProcessor()
    output = Path(output)
    outputs = [output] + ([Path(color)] if color is not None else [])
    check_outputs(outputs, [source] if isinstance(source, (str, os.PathLike)) else [], overwrite=overwrite)
    if color is not None and Path(color).resolve() == output.resolve():
        raise OutputError(f"{output}: the mask and the colour image would be the same file.")
    scene = open_scene(source)
    writers: list = []
    try:
        channels = _select_bands(scene, bands, config.num_channels)
        # Bad scaling is found before any folder or file is created (it would also stop the first strip).
        _check_scale(scene, Normalisation.from_processor(processor, rescale_factor), rescale_factor is not None)
        output.parent.mkdir(parents=True, exist_ok=True)
        writers.append(_label_writer(output, scene, palette, class_names))
        if color is not None:
            scale = Normalisation.from_processor(processor, rescale_factor).rescale_factor
            writers.append(ColourComposer(Path(color), scene, channels, scale, palette, class_names,
                                          f"{task_spec['name']}", alpha))
        counts = np.zeros(256, dtype=np.int64)
        for _, labels in iter_label_strips(
            model, scene, task_spec["name"], processor=processor, sliding=SlidingWindow(window, overlap, batch_size),
            bands=bands, rescale_factor=rescale_factor, progress=progress,
        ):
            counts += np.bincount(labels.ravel(), minlength=256)
            for writer in writers:
                writer.write(labels)
        paths = [writer.close() for writer in writers]
        writers.clear()
    finally:
        for writer in writers:
            writer.abort()
        scene.close()
    named = {name: int(counts[k]) for k, name in enumerate(class_names)}
    if counts[VOID_ID]:
        named["<nodata>"] = int(counts[VOID_ID])
    return SceneResult(str(source), paths[0], paths[1] if color is not None else None, scene.height, scene.width, named)


@dataclass
class FolderResult:
    succeeded: list[SceneResult]
    failed: dict[str, str]


def output_name(source: Path, fmt: str) -> str:
    """Mask file name for `source`: `auto` keeps TIFFs as TIFF (georeferencing) and writes PNG otherwise."""
    if fmt == "auto":
        fmt = "tif" if source.suffix.lower() in TIFF_SUFFIXES else "png"
    return f"{source.stem}.{fmt}"


def _protected_folders() -> list[Path]:
    """Folders s5-segment never writes into: the installed s5_hf package (its sample scenes are inputs users
    try first) and the interpreter's site-packages."""
    folders = {Path(__file__).resolve().parent}
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        if paths.get(key):
            folders.add(Path(paths[key]).resolve())
    return sorted(folders)


def check_outputs(outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike] = (),
                  overwrite: bool = False) -> None:
    """Raise `OutputError` naming the first of `outputs` that resolves to one of `inputs` (symlinks and hard
    links included), lies inside the installed package or site-packages, is a folder, or exists while
    `overwrite` is false. Writes nothing."""
    resolved_inputs = {}
    for source in inputs:
        source = Path(source)
        resolved_inputs[source.resolve()] = source
    inodes = {}
    for target, source in resolved_inputs.items():
        try:
            stat = target.stat()
        except OSError:
            continue
        inodes[stat.st_dev, stat.st_ino] = source
    protected = _protected_folders()
    for output in map(Path, outputs):
        target = output.resolve()
        same = resolved_inputs.get(target)
        if same is None and output.exists():
            stat = output.stat()
            same = inodes.get((stat.st_dev, stat.st_ino))
        if same is not None:
            raise OutputError(f"{output}: is the input file {same}; writing the mask there would destroy the "
                              f"imagery. Choose another output path or folder.")
        for folder in protected:
            if target.is_relative_to(folder):
                raise OutputError(f"{output}: inside the installed package or site-packages ({folder}); write "
                                  f"the mask somewhere else (pass an output path, or run from another folder).")
        if output.is_dir():
            raise OutputError(f"{output}: is a folder, not a mask file.")
        if output.exists() and not overwrite:
            raise OutputError(f"{output}: already exists; pass --overwrite (overwrite=True) to replace it.")


def plan_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, color: bool = False,
                fmt: str = "auto", overwrite: bool = False) -> tuple[dict[Path, tuple[Path, Path]], FolderResult]:
    """The outputs of folder mode, checked before anything is written: {source: (mask, colour image)} and a
    `FolderResult` whose `failed` lists scenes skipped because two of them would write the same file. Raises
    `OutputError` when any output is refused (see `check_outputs`), `FileNotFoundError` for a missing folder."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: not a folder.")
    sources = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not sources:
        raise FileNotFoundError(f"{input_dir}: no {'/'.join(IMAGE_SUFFIXES)} files.")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: is a file; folder mode writes its masks into a folder.")
    result = FolderResult([], {})
    plan: dict[Path, tuple[Path, Path]] = {}
    taken: dict[str, Path] = {}
    for source in sources:
        name = output_name(source, fmt)
        names = [name] + ([f"{Path(name).stem}_color.png"] if color else [])
        clash = next((n for n in names if n in taken), None)
        if clash is not None:
            result.failed[str(source)] = f"its output {clash} would overwrite an output of {taken[clash].name}"
            continue
        taken.update(dict.fromkeys(names, source))
        plan[source] = (output_dir / name, output_dir / f"{Path(name).stem}_color.png")
    outputs = [outputs[0] for outputs in plan.values()] + ([o[1] for o in plan.values()] if color else [])
    check_outputs(outputs, sources, overwrite=overwrite)
    return plan, result


def segment_folder(
    model,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    task: str | None = None,
    *,
    color: bool = False,
    fmt: str = "auto",
    overwrite: bool = False,
    **kwargs,
) -> FolderResult:
    """Predict every PNG/JPEG/TIFF in `input_dir` (not recursive) into `output_dir`.

    A file that fails (unreadable, wrong bands, ...) is reported and skipped; the others are still written.
    `color` adds `<stem>_color.png` per scene. Every output is checked first (`plan_folder`): if any would be an
    input file, or exists and `overwrite` is false, `OutputError` is raised and nothing is written. Other
    arguments: see `segment_file`.
    """
    output_dir = Path(output_dir)
    plan, result = plan_folder(input_dir, output_dir, color=color, fmt=fmt, overwrite=overwrite)
    for source, reason in result.failed.items():
        logger.error("%s: skipped, %s", source, reason)
    for source, outputs in tqdm(plan.items(), unit="scene", desc="scenes", disable=not kwargs.get("progress", True)):
        try:
            result.succeeded.append(segment_file(
                model, source, outputs[0], task, color=outputs[1] if color else None, overwrite=overwrite, **kwargs,
            ))
        except SceneError as error:
            result.failed[str(source)] = str(error)
            logger.error("%s", error)
        except Exception as error:  # keep going: one bad scene must not cost the others
            result.failed[str(source)] = f"{type(error).__name__}: {error}"
            logger.exception("%s failed", source)
    return result


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _parse_bands(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(b) for b in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--bands takes 1-based band numbers like 1,2,3, got {text!r}.") from error


def _parse_fraction(text: str) -> float:
    """Floats or fractions such as 1/65535."""
    if "/" in text:
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return float(text)


def load_model(model_id: str, device: str = "cpu", trust_remote_code: bool = False):
    """An S5 segmentation model and its processor from a folder or Hub repo id."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from . import S5ForSemanticSegmentation  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSemanticSegmentation.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    if not hasattr(model.config, "tasks"):
        raise ValueError(f"{model_id}: not an S5 model (model_type {model.config.model_type!r}).")
    try:
        processor = AutoImageProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except OSError:
        logger.warning("%s has no preprocessor_config.json; using S5ImageProcessor() defaults.", model_id)
        processor = S5ImageProcessor()
    return model.to(device).eval(), processor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s5-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Multi-word options are kebab-case; the snake_case spelling is accepted too (the training scripts use it).
    parser.add_argument("input", nargs="?", help="an image (PNG/JPEG/TIFF/GeoTIFF) or a folder of them")
    parser.add_argument("output", nargs="?",
                        help="mask file (.png/.tif) or folder; default: <input stem>_mask.<ext> (or "
                             "<folder name>_masks/) in the current folder")
    parser.add_argument("--model", required=True, help="S5 model folder or Hub repo id")
    parser.add_argument("--task", help="dataset head (default: the model's default task); see --list-tasks")
    parser.add_argument("--list-tasks", "--list_tasks", action="store_true",
                        help="print the model's tasks and classes, then exit (no input needed)")
    parser.add_argument("--window", type=int, default=512, help="window size in px (multiple of 16)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction in [0, 1)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--bands", type=_parse_bands, help="1-based bands to feed the model, e.g. 1,2,3")
    parser.add_argument("--rescale-factor", "--rescale_factor", type=_parse_fraction,
                        help="multiplier mapping raw values to [0, 1] (default: the processor's, 1/255)")
    parser.add_argument("--color", action="store_true", help="also write <name>_color.png with a legend")
    parser.add_argument("--alpha", type=float, default=0.6, help="mask opacity in the colour image")
    parser.add_argument("--format", dest="fmt", choices=["auto", "png", "tif"], default="auto",
                        help="mask format in folder mode (auto: TIFF for TIFF inputs, PNG otherwise)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (an output that is an input is always refused)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-compile", "--torch_compile", action="store_true",
                        help="compile the model's forward with torch.compile (minutes of compilation first; see "
                             "benchmarks/bench_inference.py --compare-compile for its effect on your machine)")
    parser.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true",
                        help="load the model with its own code")
    parser.add_argument("--no-progress", "--no_progress", action="store_true")
    return parser


def _looks_like_path(model_id: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) can only be a folder."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id


def _planned_outputs(args, source: Path) -> tuple[Path, Path | None]:
    """Mask and colour paths of single-file mode."""
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            output = output / output_name(source, args.fmt)
    else:
        default = Path(output_name(source, args.fmt))
        output = Path.cwd() / f"{default.stem}_mask{default.suffix}"  # never beside the input (see the docs)
    color = output.with_name(output.stem + "_color.png") if args.color else None
    return output, color


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input is None and not args.list_tasks:
        parser.error("the following arguments are required: input (or use --list-tasks)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    source = Path(args.input) if args.input is not None else None
    folder_output = None
    try:
        # Every output is checked before the model is loaded: a refused run costs nothing and writes nothing.
        if source is None or args.list_tasks:
            pass  # --list-tasks reads the model only
        elif source.is_dir():
            folder_output = Path(args.output) if args.output else Path.cwd() / f"{source.resolve().name}_masks"
            plan_folder(source, folder_output, color=args.color, fmt=args.fmt, overwrite=args.overwrite)
        elif not source.is_file():
            print(f"error: {source}: no such file or folder.", file=sys.stderr)
            return 2
        else:
            output, color = _planned_outputs(args, source)
            check_outputs([output] + ([color] if color else []), [source], overwrite=args.overwrite)
    except (OutputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if _looks_like_path(args.model) and not Path(args.model).expanduser().exists():
        print(f"error: --model {args.model}: no such folder.", file=sys.stderr)
        return 2
    try:
        model, processor = load_model(str(Path(args.model).expanduser()) if _looks_like_path(args.model)
                                      else args.model, args.device, args.trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"error: --model {args.model}: cannot load an S5 model ({type(error).__name__}: {error})",
              file=sys.stderr)
        return 2
    config = model.config
    if args.list_tasks:
        for spec in config.tasks:
            classes = ", ".join(spec["id2label"][k] for k in range(len(spec["id2label"])))
            print(f"{spec['name']}: {classes}")
        return 0
    try:
        task = config.tasks[config.task_index(args.task or config.default_task)]["name"]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.torch_compile:
        model = CompiledSegmenter(model)
    options = dict(processor=processor, window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                   bands=args.bands, rescale_factor=args.rescale_factor, progress=not args.no_progress,
                   alpha=args.alpha, overwrite=args.overwrite)
    if folder_output is not None:
        try:
            result = segment_folder(model, source, folder_output, task, color=args.color, fmt=args.fmt, **options)
        except (OutputError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{len(result.succeeded)} scene(s) written to {folder_output}, {len(result.failed)} failed.")
        for path, reason in result.failed.items():
            print(f"  FAILED {path}: {reason}", file=sys.stderr)
        return 1 if result.failed else 0
    try:
        result = segment_file(model, source, output, task, color=color, **options)
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (SceneError, ValueError, OSError) as error:  # OSError: e.g. the output's folder cannot be made
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"mask": str(result.mask), "color": str(result.color) if result.color else None,
                      "size": [result.height, result.width], "pixels_per_class": result.class_counts}, indent=2))
    return 0


__all__ = [
    "ArrayScene",
    "CompiledSegmenter",
    "FolderResult",
    "Normalisation",
    "OutputError",
    "PngRowWriter",
    "Scene",
    "SceneError",
    "SceneResult",
    "SlidingWindow",
    "hann_weights",
    "iter_label_strips",
    "open_scene",
    "segment_file",
    "segment_folder",
    "segment_scene",
    "window_starts",
    "check_outputs",
    "plan_folder",
]


if __name__ == "__main__":
    sys.exit(main())

