"""Evaluation of S5 segmentation heads with each dataset's protocol, distributed-safe.

Protocols (the paper's evaluation settings, as the official code runs them):

| dataset | mode | flip TTA | reported |
|---|---|---|---|
| Vaihingen, Potsdam | full image, sliding window | horizontal flip | mIoU (Vaihingen), mF1 (Potsdam); clutter ignored |
| OpenEarthMap, LoveDA | image resized to the crop size, logits resized back to the label size | no | mIoU |
| iSAID (S4P validation) | full patch, sliding window | no | mIoU without background, as the official S4P validation |

Sliding windows reuse the large-scene predictor (`s5_hf.inference.iter_label_strips`: Hann-blended windows of the
crop size, 1/4 overlap), so evaluation and deployment predict alike; the official code averages overlapping
windows uniformly instead. Every process scores its own part of the split (no sample twice), and the confusion
matrices are summed across processes before any score is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..image_processing_s5 import S5ImageProcessor
from ..inference.scenes import ArrayScene
from ..inference.sliding_window import Normalization, SlidingWindow, _check_scale, iter_label_strips
from ..label_sets import VOID_ID
from .metrics import ConfusionMatrix, SegmentationScores, official_scores


@dataclass(frozen=True)
class EvalProtocol:
    mode: str = "slide"  # "slide" (full image, sliding window) or "resize"
    flip: bool = False
    metric: str = "mean_iou"  # the score the paper reports for this dataset
    exclude_from_mean: tuple[int, ...] = ()
    official_inflation: bool = False  # the official ISPRS metric counts clutter as correct "car"


PROTOCOLS: dict[str, EvalProtocol] = {
    "vaihingen": EvalProtocol("slide", flip=True, official_inflation=True),
    "potsdam": EvalProtocol("slide", flip=True, metric="mean_f1", official_inflation=True),
    "openearthmap": EvalProtocol("resize"),
    "loveda": EvalProtocol("resize"),
    "isaid": EvalProtocol("slide", exclude_from_mean=(0,)),
}


def protocol_for(task: str) -> EvalProtocol:
    """The official protocol of a known dataset; other tasks get full-image sliding windows and mIoU."""
    return PROTOCOLS.get(task, EvalProtocol())


class FlipAveraged(torch.nn.Module):
    """Wraps a segmentation model so that its logits are log((p(x) + flip(p(flip(x)))) / 2): softmax of the output
    is the flip-averaged probability, which is what the sliding-window predictor blends."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, pixel_values: torch.Tensor, task=None):
        plain = self.model(pixel_values, task=task).logits.float().softmax(1)
        flipped = self.model(pixel_values.flip(-1), task=task).logits.float().softmax(1).flip(-1)
        return _Logits(((plain + flipped) / 2).clamp_min(1e-12).log())


@dataclass
class _Logits:
    logits: torch.Tensor


@dataclass
class TaskResult:
    task: str
    scores: SegmentationScores
    protocol: EvalProtocol
    official: SegmentationScores | None = None
    confusion: ConfusionMatrix | None = field(default=None, repr=False)
    #: What was scored, for anyone reporting the result (e.g. a model card): the split's name ("test",
    #: "val", "heldout" = training tiles held out for model selection), the images scored over all processes,
    #: and the per-process cap `max_samples` (None: the whole split).
    split: str | None = None
    num_samples: int | None = None
    max_samples: int | None = None

    def describe(self) -> dict[str, Any]:
        """The result as JSON-ready facts: split, sample count and cap, and the scores (NaN -> None)."""
        return {"split": self.split, "num_samples": self.num_samples, "max_samples": self.max_samples,
                "reported_metric": self.protocol.metric,
                **{key: (value if math.isfinite(value) else None) for key, value in self.metrics().items()}}

    @property
    def reported(self) -> float:
        return float(getattr(self.scores, self.protocol.metric))

    def metrics(self) -> dict[str, float]:
        """Flat scalars for logging: mIoU, mF1, OA (and the official, inflated values where they differ)."""
        out = {"mIoU": self.scores.mean_iou, "mF1": self.scores.mean_f1, "OA": self.scores.overall_accuracy}
        if self.official is not None:
            out.update({"official_mIoU": self.official.mean_iou, "official_mF1": self.official.mean_f1,
                        "official_OA": self.official.overall_accuracy})
        return {key: float(value) for key, value in out.items()}


def check_processor_bands(model, processor: S5ImageProcessor) -> None:
    """Refuse a processor whose per-band normalization does not fit the model's bands (e.g. the default RGB
    processor for a 4-band model: pass the processor saved with the model)."""
    expected = model.config.num_channels
    bands = len(processor.image_mean) if processor.do_normalize else None
    if bands not in (None, 1, expected):
        raise ValueError(f"The model takes {expected} band(s) but the processor normalizes {bands}: evaluate with "
                         "the processor saved with the model (AutoImageProcessor.from_pretrained(model folder)).")


def image_bands(image, num_channels: int, name: str = "image") -> np.ndarray:
    """(H, W, C) pixels of a row's image: a PIL image (converted to RGB for a 3-band model, as the benchmarks'
    readers give them) or an (H, W[, C]) array of any dtype (`LabeledFolder` rows of other bands or dtypes). A
    band count other than the model's is an error naming the sample."""
    if isinstance(image, Image.Image):
        pixels = np.asarray(image.convert("RGB") if num_channels == 3 and image.mode != "RGB" else image)
    else:
        pixels = np.asarray(image)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.ndim != 3:
        raise ValueError(f"{name}: expected an image of shape (height, width[, bands]), got {pixels.shape}.")
    if pixels.shape[2] != num_channels:
        raise ValueError(f"{name}: has {pixels.shape[2]} band(s) but the model takes {num_channels}; evaluate on "
                         "data with the model's bands (select them when reading, e.g. LabeledFolder(bands=...)).")
    return pixels


@torch.no_grad()
def predict_labels(model, image, task: str, protocol: EvalProtocol, crop_size: int,
                   processor: S5ImageProcessor, batch_size: int = 1, name: str = "image") -> np.ndarray:
    """(H, W) int64 class ids for one image (a PIL image or an (H, W, C) array of the model's bands, any dtype the
    processor takes), at the image's own size (`batch_size` sliding windows per forward)."""
    scorer = FlipAveraged(model) if protocol.flip else model
    pixels = image_bands(image, model.config.num_channels, name)
    if protocol.mode == "slide":
        scene = ArrayScene(pixels, name)
        labels = np.empty(pixels.shape[:2], dtype=np.int64)
        for top, strip in iter_label_strips(scorer, scene, task, processor=processor,
                                            sliding=SlidingWindow(crop_size, 0.25, batch_size)):
            labels[top : top + len(strip)] = strip
        return labels
    if protocol.mode == "resize":
        normalization = Normalization.from_processor(processor)
        if pixels.dtype == np.uint8 and pixels.shape[2] == 3:
            # 8-bit RGB as the official pipeline resizes it: Pillow's bilinear filter on the 8-bit image.
            resized = np.asarray(Image.fromarray(pixels).resize((crop_size, crop_size), Image.BILINEAR))
            inputs = normalization(resized.transpose(2, 0, 1))[None]
        else:
            # Other bands/dtypes: normalize (clip, scale, mean/std: per band and affine after the clip, so it
            # commutes with the bilinear resize) in the data's units, then resize the float bands.
            _check_scale(ArrayScene(pixels, name), normalization, explicit=False)
            full = normalization(pixels.transpose(2, 0, 1))[None]
            inputs = F.interpolate(full, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
        device = next(model.parameters()).device
        logits = scorer(inputs.to(device), task=task).logits.float()
        logits = F.interpolate(logits, size=pixels.shape[:2], mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].cpu().numpy()
    raise ValueError(f"Unknown evaluation mode {protocol.mode!r}: use 'slide' or 'resize'.")


def evaluate_task(
    model,
    rows: Iterable[Mapping[str, Any]],
    task: str,
    *,
    crop_size: int,
    protocol: EvalProtocol | None = None,
    accelerator=None,
    processor: S5ImageProcessor | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
) -> TaskResult:
    """Score `model`'s head `task` on `rows` (``image`` and ``mask`` columns: this process's part of the split).

    `processor` normalizes the images: the one saved with the model (its per-band statistics for data that is not
    8-bit RGB); the default `S5ImageProcessor()` is for 8-bit RGB models only. Every process must call it (the
    confusion matrices are reduced across processes)."""
    protocol = protocol or protocol_for(task)
    spec = model.config.get_task(task)
    confusion = ConfusionMatrix(spec.num_labels, spec.ignore_index, class_names=list(spec.id2label.values()))
    processor = processor or S5ImageProcessor()
    check_processor_bands(model, processor)
    was_training = model.training
    model.eval()
    main = accelerator is None or accelerator.is_local_main_process
    scored = 0
    try:
        for index, row in enumerate(tqdm(rows, desc=f"eval {task}", unit="img", disable=not main, leave=False)):
            if max_samples is not None and index >= max_samples:
                break
            scored += 1
            if row.get("mask") is None:
                raise ValueError(f"{task}: sample {row.get('id')!r} has no mask; evaluate a labelled split.")
            target = np.asarray(row["mask"], dtype=np.int64)
            pred = predict_labels(model, row["image"], task, protocol, crop_size, processor, batch_size,
                                  name=f"{task}: sample {row.get('id')!r}")
            if pred.shape != target.shape:
                raise ValueError(f"{task}: sample {row.get('id')!r}: image {pred.shape} and mask {target.shape} differ.")
            confusion.update(pred, target)
    finally:
        model.train(was_training)
    reduced = confusion.reduce(accelerator)
    if accelerator is not None and accelerator.num_processes > 1:
        scored = int(accelerator.reduce(torch.tensor([scored], device=accelerator.device), reduction="sum").item())
    scores = reduced.compute(exclude_from_mean=protocol.exclude_from_mean)
    official = official_scores(reduced) if protocol.official_inflation and reduced.ignore_index != VOID_ID else None
    return TaskResult(task, scores, protocol, official, reduced, num_samples=scored, max_samples=max_samples)


def evaluate_sources(model, sources: Mapping[str, Any], split: str | Mapping[str, str], *, crop_size: int,
                     accelerator=None, max_samples: int | None = None,
                     reader_options: Mapping[str, Mapping] | None = None, batch_size: int = 1,
                     processor: S5ImageProcessor | None = None) -> dict[str, TaskResult]:
    """`evaluate_task` for every `{task: DataSource}` on `split` (one name, or one per task), each process scoring
    its own part; `processor`: see `evaluate_task`."""
    from ..data.streams import process_part

    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    unwrapped = model if accelerator is None else accelerator.unwrap_model(model)
    results = {}
    for task, source in sources.items():
        task_split = split if isinstance(split, str) else split[task]
        rows = process_part(source.load(task_split, **(reader_options or {}).get(task, {})), rank, world)
        # Each process caps its own part, so the cap is per process.
        result = evaluate_task(unwrapped, rows, task, crop_size=crop_size, accelerator=accelerator,
                               max_samples=max_samples, batch_size=batch_size, processor=processor)
        result.split = task_split
        results[task] = result
    return results

__all__ = ["EvalProtocol", "FlipAveraged", "PROTOCOLS", "TaskResult", "check_processor_bands", "evaluate_sources",
           "evaluate_task", "image_bands", "predict_labels", "protocol_for"]
