"""Gradio demo (Hugging Face Space) for S5 remote-sensing segmentation.

    python demo/app.py                         (model from $S5_MODEL_ID, default below)
    S5_MODEL_ID=path/to/model python demo/app.py

Pick a model (Hub id or local folder), a dataset head and an aerial image; the app shows the predicted mask over
the image with a legend and the share of each class. Images of any size are predicted with sliding windows at
their native resolution (`s5_hf.inference.segment_scene`). `predict` holds all the logic and needs no Gradio.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image

# No usage statistics or version checks from the demo or its tests.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from s5_hf import sample_data  # noqa: E402
from s5_hf.inference import load_model, segment_scene  # noqa: E402
from s5_hf.visualize import legend, legend_markdown, overlay, task_palette, with_legend  # noqa: E402

DEFAULT_MODEL_ID = "s5/s5-vit-b-mdf"
MODEL_ID = os.environ.get("S5_MODEL_ID", DEFAULT_MODEL_ID)
# Sliding-window size of the demo: the training size; smaller images use one window of their own size.
WINDOW = int(os.environ.get("S5_WINDOW", "512"))
EXAMPLES = ["SOAP_031.png", "YELL_2019_541000_4977000_crop.png"]


@lru_cache(maxsize=2)
def load(model_id: str):
    """Model and processor for `model_id` (cached: switching heads does not reload)."""
    return load_model(model_id.strip())


def task_names(model_id: str) -> list[str]:
    model, _ = load(model_id)
    return list(model.config.task_names)


def predict(image: Image.Image | np.ndarray, task: str, model_id: str = MODEL_ID,
            alpha: float = 0.5) -> tuple[Image.Image, str]:
    """Segment `image` with head `task` of `model_id`.

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


def build_demo(model_id: str = MODEL_ID):
    """The Gradio Blocks app (imports Gradio only here)."""
    import gradio as gr

    def on_load(new_model_id: str):
        try:
            return gr.Dropdown(choices=task_names(new_model_id), value=model_default_task(new_model_id))
        except (OSError, ValueError) as error:  # no such repo/folder, or not an S5 model
            raise gr.Error(f"Cannot load {new_model_id!r}: {error}") from error

    def on_predict(image, task, current_model_id, alpha):
        try:
            return predict(image, task, current_model_id, alpha)
        except (OSError, ValueError) as error:
            raise gr.Error(str(error)) from error

    tasks = task_names(model_id)
    with gr.Blocks(title="S5 remote-sensing segmentation") as demo:
        gr.Markdown(
            "# S5: remote-sensing semantic segmentation\n"
            "Aerial or satellite RGB image in, class mask out. Pick the dataset head whose classes you want "
            "(ISPRS Vaihingen/Potsdam: urban land cover; OpenEarthMap: land cover; LoveDA: urban/rural land "
            "cover; iSAID: objects). Paper: [arXiv 2508.12409](https://arxiv.org/abs/2508.12409)."
        )
        with gr.Row():
            model_box = gr.Textbox(value=model_id, label="Model (Hub id or folder)", scale=3)
            load_button = gr.Button("Load model", scale=1)
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image")
                task = gr.Dropdown(choices=tasks, value=model_default_task(model_id), label="Dataset head")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity")
                run = gr.Button("Segment", variant="primary")
            with gr.Column():
                result = gr.Image(type="pil", label="Prediction")
                shares = gr.Markdown()
        gr.Examples(examples=[[str(sample_data.path(name))] for name in EXAMPLES], inputs=[image])
        load_button.click(on_load, inputs=[model_box], outputs=[task])
        run.click(on_predict, inputs=[image, task, model_box, alpha], outputs=[result, shares])
    return demo


def model_default_task(model_id: str) -> str:
    model, _ = load(model_id)
    return model.config.default_task


if __name__ == "__main__":
    build_demo().launch(allowed_paths=[str(sample_data.ROOT)])
