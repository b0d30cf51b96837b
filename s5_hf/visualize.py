"""Colour masks, overlays and legends for S5 predictions (Pillow and numpy only).

The colours of a task come from its dataset's official colour code (`s5_hf.label_sets`) when the task is a
known dataset with the same classes; custom tasks get distinct generated colours, the same on every call.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .label_sets import LABEL_SETS, VOID_ID

VOID_COLOR = (0, 0, 0)


def generated_palette(num_classes: int) -> np.ndarray:
    """`num_classes` distinct RGB colours: hues stepped by the golden ratio, alternating two brightness levels."""
    colors = []
    for k in range(num_classes):
        hue = (k * 0.618033988749895) % 1.0
        value = 0.95 if k % 2 == 0 else 0.7
        colors.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, value)))
    return np.array(colors, dtype=np.uint8).reshape(num_classes, 3)


def task_palette(task: Mapping) -> np.ndarray:
    """(K, 3) uint8 colours of a task spec (`config.get_task(name)`: `name`, `id2label`)."""
    class_names = [task["id2label"][k] for k in range(len(task["id2label"]))]
    label_set = LABEL_SETS.get(str(task["name"]).lower())
    if label_set is not None and list(label_set.class_names) == class_names and label_set.palette:
        return np.array(label_set.palette, dtype=np.uint8)
    return generated_palette(len(class_names))


def colorize(mask: np.ndarray, palette: np.ndarray, void_color: Sequence[int] = VOID_COLOR) -> Image.Image:
    """RGB image of a class-id mask; the void id 255 (and any id without a colour) gets `void_colour`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"A mask must be 2-D (height, width), got shape {mask.shape}.")
    lookup = np.tile(np.array(void_color, dtype=np.uint8), (256, 1))
    lookup[: len(palette)] = palette
    if mask.min(initial=0) < 0 or mask.max(initial=0) > VOID_ID:
        raise ValueError(f"Mask ids must be in 0..{VOID_ID}, got {mask.min()}..{mask.max()}.")
    return Image.fromarray(lookup[mask.astype(np.uint8)])


def overlay(image: Image.Image, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The colour mask blended over `image` with opacity `alpha` (void pixels show the image unchanged)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    base = image.convert("RGB")
    if base.size != (mask.shape[1], mask.shape[0]):
        raise ValueError(f"The image is {base.size[0]}x{base.size[1]} but the mask is {mask.shape[1]}x{mask.shape[0]}.")
    return Image.fromarray(blend_rows(np.asarray(base), np.asarray(mask), palette, alpha))


def blend_rows(rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float) -> np.ndarray:
    """Blend a block of RGB pixels (h, w, 3) with the colours of `mask` (h, w); void pixels keep the image."""
    colors = np.asarray(colorize(mask, palette), dtype=np.float32)
    blended = (1 - alpha) * rgb.astype(np.float32) + alpha * colors
    blended = np.where((np.asarray(mask) == VOID_ID)[..., None], rgb, blended)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def legend(class_names: Sequence[str], palette: np.ndarray, title: str | None = None, font_size: int = 14,
           present: Sequence[int] | None = None) -> Image.Image:
    """A white panel with one colour swatch and name per class. With `present`, only those class ids are listed."""
    ids = list(range(len(class_names))) if present is None else sorted(int(k) for k in present if k < len(class_names))
    font = _font(font_size)
    line = font_size + 8
    pad, swatch = 8, font_size + 2
    labels = [class_names[k].replace("_", " ") for k in ids]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([measure.textlength(t, font=font) for t in labels + ([title] if title else [])], default=0)
    rows = len(ids) + (1 if title else 0)
    panel = Image.new("RGB", (int(3 * pad + swatch + text_width), max(2 * pad + rows * line, 1)), "white")
    draw = ImageDraw.Draw(panel)
    y = pad
    if title:
        draw.text((pad, y), title, fill="black", font=font)
        y += line
    for k, text in zip(ids, labels):
        draw.rectangle([pad, y, pad + swatch, y + swatch], fill=tuple(int(c) for c in palette[k]), outline="black")
        draw.text((2 * pad + swatch, y), text, fill="black", font=font)
        y += line
    return panel


def legend_markdown(class_names: Sequence[str], palette: np.ndarray, present: Sequence[int] | None = None) -> str:
    """A Markdown table of class id, colour (hex) and name, e.g. for a Gradio Markdown component."""
    ids = range(len(class_names)) if present is None else sorted(int(k) for k in present if k < len(class_names))
    rows = ["| id | colour | class |", "|---|---|---|"]
    for k in ids:
        hex_color = "#" + "".join(f"{int(c):02x}" for c in palette[k])
        swatch = f"<span style='color:{hex_color}'>&#9632;</span> `{hex_color}`"
        rows.append(f"| {k} | {swatch} | {class_names[k].replace('_', ' ')} |")
    return "\n".join(rows)


def with_legend(image: Image.Image, panel: Image.Image) -> Image.Image:
    """`image` with the legend `panel` to its right (white background)."""
    width, height = image.width + panel.width, max(image.height, panel.height)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(image.convert("RGB"), (0, 0))
    canvas.paste(panel, (image.width, 0))
    return canvas


__all__ = [
    "blend_rows",
    "colorize",
    "generated_palette",
    "legend",
    "legend_markdown",
    "overlay",
    "task_palette",
    "with_legend",
]
