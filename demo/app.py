"""Gradio demo (Hugging Face Space) for S5 remote-sensing segmentation.

    python demo/app.py                                   (the published models; default below or $S5_MODEL_ID)
    python demo/app.py --local-model path/to/model       (also offer one local folder, or $S5_LOCAL_MODEL)

Visitors pick one of the published models (a fixed list) or the one local folder the operator passed at launch,
a dataset head and an aerial image; the app shows the predicted mask over the image with a legend and the share
of each class. Nothing else is loaded: a visitor cannot make the server download a Hub repo or read a server
path, and errors shown to visitors never include server paths (the details go to the server log). Images of
any size are predicted with sliding windows at their native resolution (`s5_hf.inference.segment_scene`).
`predict` holds the logic and needs no Gradio.
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
from s5_hf.inference import load_model, segment_scene  # noqa: E402
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


def predict(image: Image.Image | np.ndarray, task: str, model_id: str = DEFAULT_MODEL_ID,
            alpha: float = 0.5) -> tuple[Image.Image, str]:
    """Segment `image` with head `task` of `model_id` (a folder or Hub id: the app checks it is allowed).

    Returns the mask over the image with a legend of the classes present, and a Markdown table of the classes
    with their share of the pixels.
    """
    if image is None:
        raise ValueError("Upload an image first.")
    model, processor = load(model_id)
    spec = model.config.get_task(task)  # unknown task -> ValueError listing the model's tasks
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    image = image.convert("RGB")
    labels = segment_scene(model, image, spec["name"], processor=processor,
                           window=min(WINDOW, _ceil16(max(image.size))))
    names = [spec["id2label"][k] for k in range(len(spec["id2label"]))]
    palette = task_palette(spec)
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    present = [k for k in range(len(names)) if counts[k]]
    panel = legend(names, palette, title=spec["name"], present=present)
    shown = with_legend(overlay(image, labels, palette, alpha), panel)
    table = legend_markdown(names, palette, present=present).splitlines()
    table[0] += " share |"
    table[1] += "---|"
    for row, k in enumerate(present, start=2):
        table[row] += f" {100 * counts[k] / labels.size:.1f} % |"
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

    def on_predict(image, task, choice, alpha):
        source = source_of(choice)
        try:
            return predict(image, task, source, alpha)
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
                task = gr.Dropdown(choices=tasks, value=model_default_task(source), label="Dataset head",
                                   elem_id="task")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                result = gr.Image(type="pil", label="Prediction", elem_id="prediction")
                shares = gr.Markdown(elem_id="shares")
        gr.Examples(examples=[[str(sample_data.path(name))] for name in EXAMPLES], inputs=[image])
        load_button.click(on_load, inputs=[model_box], outputs=[task])
        run.click(on_predict, inputs=[image, task, model_box, alpha], outputs=[result, shares])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-model", "--local_model",
                        help="one local model folder to offer besides the published ones (or $S5_LOCAL_MODEL)")
    parser.add_argument("--default-model", "--default_model",
                        help="the model selected at start: a published id, or the local folder (or $S5_MODEL_ID)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo(args.local_model, args.default_model).launch(allowed_paths=[str(sample_data.ROOT)])


if __name__ == "__main__":
    main()
