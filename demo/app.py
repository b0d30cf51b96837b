"""Gradio demo (Hugging Face Space) for S5 remote-sensing segmentation.

    python demo/app.py                                   (the published models; default below or $S5_MODEL_ID)
    python demo/app.py --local-model path/to/model       (also offer one local folder, or $S5_LOCAL_MODEL)

Visitors pick one of the published models (a fixed list) or the one local folder the operator passed at launch,
a dataset head and an aerial image; the app shows the predicted mask over the image with a legend and the share
of each class. Nothing else is loaded: a visitor cannot make the server download a Hub repo or read a server
path, and errors shown to visitors never include server paths (the details go to the server log). Images of
any size are predicted with sliding windows at their native resolution (`s5_hf.inference.segment_scene`).
`predict` holds the logic and needs no Gradio.

Models of more than three bands (or of 16-bit data) take a GeoTIFF upload of their bands, read from the uploaded
bytes (never from a path); the prediction is drawn over an RGB composite of three of its bands: by default the
bands an RGB checkpoint's filters were adapted to (`config.band_adaptation["rgb_bands"]`, 0-based) or the saved
processor's `rgb_bands`, else the first three; the visitor can choose others (1-based or band descriptions,
e.g. 4,3,2). The composite is stretched for display to the processor's clip bounds (percentile clipping) or to
the image's own 2nd-98th percentiles per band.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# No usage statistics or version checks from the demo or its tests.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from s5_hf import sample_data  # noqa: E402
from s5_hf.cli import ArgumentParser  # noqa: E402
from s5_hf.data.images import parse_bands, resolve_bands  # noqa: E402
from s5_hf.inference import load_model, segment_scene  # noqa: E402
from s5_hf.label_sets import VOID_ID  # noqa: E402
from s5_hf.visualize import legend, legend_markdown, overlay, task_palette, with_legend  # noqa: E402

logger = logging.getLogger("s5_demo")

# The released checkpoints (model_cards/): the only Hub repos the demo ever loads.
PUBLISHED_MODELS = (
    "s5/s5-vit-b-mdf", "s5/s5-vit-l-mdf", "s5/s5-vit-h-mdf",
    "s5/s5-vit-b-s4p", "s5/s5-vit-l-s4p", "s5/s5-vit-h-s4p",
)
DEFAULT_MODEL_ID = "s5/s5-vit-b-mdf"
# How the operator's local folder is shown to visitors (its path stays on the server).
LOCAL_CHOICE = "local model"
# Sliding-window size of the demo: the training size; smaller images use one window of their own size.
WINDOW = int(os.environ.get("S5_WINDOW", "512"))
EXAMPLES = ["SOAP_031.png", "YELL_2019_541000_4977000_crop.png"]


def operator_settings(local_model: str | None = None, default: str | None = None) -> tuple[dict[str, str], str]:
    """The models visitors may choose, {choice shown: what is loaded}, and the default choice.

    `local_model` (or $S5_LOCAL_MODEL) is the one local folder offered as "local model". `default` (or
    $S5_MODEL_ID) must be a published id or that folder; an existing folder in $S5_MODEL_ID alone (the
    earlier way to serve a local model) becomes the local model.
    """
    local_model = local_model or os.environ.get("S5_LOCAL_MODEL") or None
    default = default or os.environ.get("S5_MODEL_ID") or None
    if local_model is None and default and default not in PUBLISHED_MODELS and Path(default).is_dir():
        local_model = default
    models = {model_id: model_id for model_id in PUBLISHED_MODELS}
    if local_model is not None:
        if not Path(local_model).is_dir():
            raise ValueError(f"local model {local_model}: no such folder.")  # the operator's console, not visitors'
        models[LOCAL_CHOICE] = str(Path(local_model).resolve())
    if default is None:
        default = LOCAL_CHOICE if local_model is not None else DEFAULT_MODEL_ID
    elif local_model is not None and default in (local_model, models.get(LOCAL_CHOICE)):
        default = LOCAL_CHOICE
    if default not in models:
        raise ValueError(f"default model {default!r} is not offered; choose one of {', '.join(models)}.")
    return models, default


@lru_cache(maxsize=2)
def load(model_id: str):
    """Model and processor for `model_id` (cached: switching heads does not reload)."""
    return load_model(model_id.strip())


def task_names(model_id: str) -> list[str]:
    model, _ = load(model_id)
    return list(model.config.task_names)


def model_default_task(model_id: str) -> str:
    model, _ = load(model_id)
    return model.config.default_task


def default_rgb_bands(model, processor) -> list[int]:
    """0-based bands of the display composite: the bands an RGB checkpoint's filters were adapted to
    (`config.band_adaptation["rgb_bands"]`, see `s5_hf.modeling_s5`), or `rgb_bands` of the processor, else the
    first three (the only band, repeated, for a single-band model)."""
    adaptation = getattr(model.config, "band_adaptation", None) or {}
    for chosen in (adaptation.get("rgb_bands"), getattr(processor, "rgb_bands", None)):
        if chosen is not None:
            return [int(b) for b in chosen]
    return [0, 1, 2] if model.config.num_channels >= 3 else [0, 0, 0]


def read_upload(data: bytes) -> tuple[np.ndarray, np.ndarray | None, tuple[str | None, ...]]:
    """(pixels (H, W, C) in the stored dtype, valid (H, W) bool or None, band descriptions) of uploaded GeoTIFF
    bytes, read in memory with rasterio (an upload is never a path on the server)."""
    try:
        import rasterio
        from rasterio.io import MemoryFile
    except ImportError:
        raise ValueError("Multi-band uploads need rasterio on the server (pip install 's5-hf[geo]').") from None
    try:
        with MemoryFile(data) as memory, memory.open() as src:
            pixels = src.read().transpose(1, 2, 0)
            masked = any(rasterio.enums.MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)
            valid = src.dataset_mask() > 0 if masked else None
            return pixels, valid, tuple(src.descriptions)
    except rasterio.errors.RasterioError:
        raise ValueError("The upload is not a readable GeoTIFF.") from None


def display_rgb(pixels: np.ndarray, bands: list[int], low=None, high=None) -> Image.Image:
    """An 8-bit RGB image of `bands` of `pixels` (H, W, C): uint8 bands as they are; others stretched per band
    from `low` to `high` (per band of the image, e.g. the processor's clip bounds) or their 2nd-98th percentile."""
    chosen = pixels[..., bands].astype(np.float32)
    if pixels.dtype == np.uint8:
        return Image.fromarray(chosen.astype(np.uint8))
    if low is None or high is None:
        low, high = np.percentile(chosen, 2, axis=(0, 1)), np.percentile(chosen, 98, axis=(0, 1))
    else:
        low, high = np.asarray(low, np.float32)[bands], np.asarray(high, np.float32)[bands]
    scaled = (chosen - low) / np.maximum(high - low, 1e-6)
    return Image.fromarray((np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8))


def predict(image: Image.Image | np.ndarray | bytes, task: str, model_id: str = DEFAULT_MODEL_ID,
            alpha: float = 0.5, rgb_bands: str | None = None) -> tuple[Image.Image, str]:
    """Segment `image` with head `task` of `model_id` (a folder or Hub id: the app checks it is allowed).

    `image`: a PIL image or array, or the bytes of an uploaded GeoTIFF (any band count and dtype the model's
    processor takes). `rgb_bands`: the bands shown as red, green, blue, 1-based numbers or band descriptions
    (e.g. "4,3,2"); default: see `default_rgb_bands`.

    Returns the mask over the image (an RGB composite for other than 3-band data) with a legend of the classes
    present, and a Markdown table of the classes with their share of the pixels.
    """
    if image is None:
        raise ValueError("Upload an image first.")
    model, processor = load(model_id)
    spec = model.config.get_task(task)  # unknown task -> ValueError listing the model's tasks
    bands = model.config.num_channels
    valid, descriptions = None, ()
    if isinstance(image, (bytes, bytearray)):
        pixels, valid, descriptions = read_upload(bytes(image))
    elif bands == 3:
        image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        pixels = np.asarray(image.convert("RGB"))
    else:
        pixels = np.asarray(image)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.shape[2] != bands:
        raise ValueError(f"This model takes {bands} band(s) but the image has {pixels.shape[2]}; upload a GeoTIFF "
                         f"of the model's {bands} bands.")
    if rgb_bands and str(rgb_bands).strip():
        try:
            shown_bands = resolve_bands(parse_bands(str(rgb_bands)), bands, descriptions)
        except ValueError as error:
            raise ValueError(f"RGB composite: {error}") from None
        if len(shown_bands) != 3:
            raise ValueError(f"RGB composite: choose 3 bands (red, green, blue), got {len(shown_bands)}.")
    else:
        shown_bands = default_rgb_bands(model, processor)
    clip = getattr(processor, "do_clip", False)
    image = display_rgb(pixels, shown_bands, processor.clip_min if clip else None,
                        processor.clip_max if clip else None)
    labels = segment_scene(model, pixels, spec.name, processor=processor,
                           window=min(WINDOW, _ceil16(max(pixels.shape[:2]))))
    if valid is not None:
        labels[~valid] = VOID_ID
    names = spec.class_names
    palette = task_palette(spec)
    counts = np.bincount(labels.ravel(), minlength=256)[: len(names)]
    present = [k for k in range(len(names)) if counts[k]]
    panel = legend(names, palette, title=spec.name, present=present)
    shown = with_legend(overlay(image, labels, palette, alpha), panel)
    table = legend_markdown(names, palette, present=present).splitlines()
    table[0] += " share |"
    table[1] += "---|"
    for row, k in enumerate(present, start=2):
        table[row] += f" {100 * counts[k] / max(1, counts.sum()):.1f} % |"
    return shown, "\n".join(table)


def _ceil16(n: int) -> int:
    return -(-n // 16) * 16


# Absolute paths (two or more components) inside an error text.
_PATH = re.compile(r"(?<![\w.:/])(?:~|[A-Za-z]:)?(?:[/\\][\w.@+-]+){2,}[/\\]?")


def visitor_message(error: BaseException, models: dict[str, str]) -> str:
    """What a visitor sees for `error`: our own ValueErrors (unknown head, unusable image) with any server path
    replaced; for anything else (files, network, internals) a generic sentence. Details go to the server log."""
    if isinstance(error, ValueError) and not isinstance(error, OSError):
        text = str(error)
        for choice, source in models.items():
            if choice != source:
                text = text.replace(source, choice)
        return _PATH.sub("<server path>", text)
    return "The model could not run on this input; the details are in the server log."


def build_demo(local_model: str | None = None, default: str | None = None):
    """The Gradio Blocks app (imports Gradio only here). See `operator_settings` for the arguments."""
    import gradio as gr

    models, default = operator_settings(local_model, default)

    def source_of(choice: str) -> str:
        # Gradio checks dropdown values too; this also covers direct API calls with any string.
        if choice not in models:
            raise gr.Error(f"This demo runs only its listed models: {', '.join(models)}.")
        return models[choice]

    def on_load(choice: str):
        source = source_of(choice)
        try:
            return gr.Dropdown(choices=task_names(source), value=model_default_task(source))
        except Exception as error:  # no such repo or folder, not an S5 model, network: log, show no paths
            logger.exception("loading %s (%s) failed", choice, source)
            raise gr.Error(f"Cannot load {choice}. {visitor_message(error, models)}") from None

    def on_predict(image, task, choice, alpha, upload=None, rgb_bands=None):
        source = source_of(choice)
        try:
            return predict(upload if upload is not None else image, task, source, alpha, rgb_bands)
        except Exception as error:
            logger.exception("predicting with %s (%s) failed", choice, source)
            raise gr.Error(visitor_message(error, models)) from None

    source = models[default]
    tasks = task_names(source)
    with gr.Blocks(title="S5 remote-sensing segmentation") as demo:
        gr.Markdown(
            "# S5: remote-sensing semantic segmentation\n"
            "Aerial or satellite RGB image in, class mask out. Pick the dataset head whose classes you want "
            "(ISPRS Vaihingen/Potsdam: urban land cover; OpenEarthMap: land cover; LoveDA: urban/rural land "
            "cover; iSAID: objects). Paper: [arXiv 2508.12409](https://arxiv.org/abs/2508.12409)."
        )
        with gr.Row():
            model_box = gr.Dropdown(choices=list(models), value=default, label="Model", scale=3,
                                    elem_id="model")
            load_button = gr.Button("Load model", scale=1, elem_id="load")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="image")
                # Multi-band models: the GeoTIFF's bytes (type="binary": no server path ever reaches predict).
                upload = gr.File(type="binary", file_types=[".tif", ".tiff"], elem_id="upload",
                                 label="Or a GeoTIFF of the model's bands (multispectral / 16-bit models)")
                rgb_bands = gr.Textbox(label="RGB composite bands (1-based or band names, e.g. 4,3,2; empty: the "
                                             "model's default)", elem_id="rgb_bands")
                task = gr.Dropdown(choices=tasks, value=model_default_task(source), label="Dataset head",
                                   elem_id="task")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                result = gr.Image(type="pil", label="Prediction", elem_id="prediction")
                shares = gr.Markdown(elem_id="shares")
        gr.Examples(examples=[[str(sample_data.path(name))] for name in EXAMPLES], inputs=[image])
        load_button.click(on_load, inputs=[model_box], outputs=[task])
        run.click(on_predict, inputs=[image, task, model_box, alpha, upload, rgb_bands], outputs=[result, shares])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_model",
                        help="one local model folder to offer besides the published ones (or $S5_LOCAL_MODEL)")
    parser.add_argument("--default_model",
                        help="the model selected at start: a published id, or the local folder (or $S5_MODEL_ID)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo(args.local_model, args.default_model).launch(allowed_paths=[str(sample_data.ROOT)])


if __name__ == "__main__":
    main()
