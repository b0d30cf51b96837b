"""Sliding-window prediction of large scenes: windows with smooth blending, bounded memory, PNG/JPEG/TIFF/GeoTIFF in and out.

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

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..image_processing_s5 import S5ImageProcessor, clip_bands
from ..label_sets import VOID_ID

logger = logging.getLogger(__name__)



from ..data.images import BandSelectionError, describe_bands, parse_bands, resolve_bands
from ..data.patches import window_starts
from .scenes import Scene, SceneError, open_scene

@dataclass
class _Logits:
    logits: torch.Tensor


class CompiledSegmenter(torch.nn.Module):
    """`model` with its single-task forward (`pixel_values -> logits`) compiled by `torch.compile`, one compiled
    graph per task, for the sliding-window predictor (`segment_scene(CompiledSegmenter(model), ...)`, CLI
    `--torch_compile`). Called like the model, `(pixel_values, task=name)`, it returns an object with `.logits`.

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
        from ..modeling_s5 import TaskRouting

        routing = TaskRouting.whole_batch(task)
        outputs = self.model.s5(pixel_values, routing=routing, return_dict=True, skip_neck=True)
        return self.model._logits(outputs.feature_maps, routing, None, pixel_values.shape[-2:])

    def forward(self, pixel_values: torch.Tensor, task: str | None = None) -> _Logits:
        from ..modeling_s5 import check_pixel_values

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
def hann_weights(height: int, width: int) -> np.ndarray:
    """2-D weight sin^2(pi (i + 0.5) / n) per axis: positive everywhere, 1 near the centre."""
    def axis(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    return np.outer(axis(height), axis(width)).astype(np.float32)


@dataclass(frozen=True)
class Normalization:
    """How raw band values become model inputs: clipped per band to [clip_min, clip_max] if the processor clips
    (percentile clipping of 16-bit data), x * rescale_factor, then (x - mean) / std per band."""

    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip_min: tuple[float, ...] | None = None
    clip_max: tuple[float, ...] | None = None
    #: The dtype the processor's per-band statistics were computed on (None: any).
    input_dtype: str | None = None

    @classmethod
    def from_processor(cls, processor: S5ImageProcessor, rescale_factor: float | None = None) -> Normalization:
        if rescale_factor is not None:
            scale = rescale_factor
        else:
            scale = processor.rescale_factor if processor.do_rescale else 1.0
        if processor.do_normalize:
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        else:
            mean, std = (0.0,), (1.0,)
        clip = getattr(processor, "do_clip", False)
        return cls(float(scale), mean, std, tuple(processor.clip_min) if clip else None,
                   tuple(processor.clip_max) if clip else None, getattr(processor, "input_dtype", None))

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        if self.clip_min is not None:
            raw = clip_bands(raw, self.clip_min, self.clip_max)  # the processor's own clipping, bands first
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


def _select_bands(scene: Scene, bands: Sequence[int | str] | str | None, expected: int) -> list[int]:
    """0-based band indices to feed the model; `bands` are 1-based numbers as in GDAL and the CLI, or band
    descriptions (see `s5_hf.data.images.parse_bands`, the parser the data readers use too)."""
    if bands is None:
        if scene.bands != expected:
            raise SceneError(
                f"{scene.name}: has {scene.bands} band(s) but the model expects {expected} (the scene's bands: "
                f"{describe_bands(scene.bands, scene.descriptions)}). Select bands with bands=[...] (CLI: --bands, "
                f"1-based numbers or band descriptions), e.g. --bands {','.join(str(b) for b in range(1, expected + 1))}."
            )
        return list(range(expected))
    try:
        chosen = resolve_bands(bands, scene.bands, scene.descriptions)
    except BandSelectionError as error:
        raise SceneError(f"{scene.name}: {error}.") from None
    except ValueError as error:
        raise SceneError(f"{scene.name}: {error}") from None
    if len(chosen) != expected:
        raise SceneError(f"{scene.name}: {len(chosen)} band(s) selected ({','.join(map(str, parse_bands(bands)))}) "
                         f"but the model expects {expected}.")
    return chosen


def _check_scale(scene: Scene, normalization: Normalization, explicit: bool) -> None:
    expected = normalization.input_dtype
    if expected is not None and np.dtype(scene.dtype) != np.dtype(expected) and not explicit:
        # Statistics of one dtype applied to another (8-bit PNG into a 16-bit model) are garbage: refuse.
        raise SceneError(f"{scene.name}: holds {np.dtype(scene.dtype).name} values but the processor's per-band "
                         f"statistics were computed on {expected} data: pass imagery of the training dtype.")
    # 8-bit scaling applied to 16-bit or float imagery gives garbage predictions without any error: refuse.
    if scene.dtype != np.uint8 and not explicit and math.isclose(normalization.rescale_factor, 1 / 255):
        raise SceneError(
            f"{scene.name}: holds {scene.dtype} values but the processor scales by 1/255 (8-bit imagery). Pass "
            f"rescale_factor (CLI: --rescale_factor) mapping the data to [0, 1], e.g. 1/65535 for 16-bit data."
        )


@torch.inference_mode()
def iter_label_strips(
    model,
    scene: Scene,
    task: str | None = None,
    *,
    processor: S5ImageProcessor | None = None,
    sliding: SlidingWindow | None = None,
    bands: Sequence[int | str] | str | None = None,
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
    task = config.get_task(task if task is not None else config.default_task)
    num_classes = task.num_labels
    if num_classes >= VOID_ID:
        raise ValueError(f"Task {task.name!r} has {num_classes} classes; uint8 label maps hold at most {VOID_ID}.")
    processor = processor or S5ImageProcessor()
    normalization = Normalization.from_processor(processor, rescale_factor)
    if len(normalization.mean) not in (1, config.num_channels):
        raise ValueError(
            f"The processor normalises {len(normalization.mean)} bands but the model takes {config.num_channels}."
        )
    channels = _select_bands(scene, bands, config.num_channels)
    _check_scale(scene, normalization, rescale_factor is not None)

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
                batch[i, :, :h, :w] = normalization(raw)  # beyond the scene: 0 = the mean colour
            logits = model(batch.to(device), task=task.name).logits.float().cpu()
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
    bands: Sequence[int | str] | str | None = None,
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
        bands: bands to use when the scene has more or fewer than the model's `num_channels`: 1-based numbers
            or band descriptions (``[4, 3, 2]``, ``"red,green,blue"``).
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
