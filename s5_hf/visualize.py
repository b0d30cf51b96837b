"""Colour masks, overlays and legends for S5 predictions, and the package's charts (Pillow and numpy only).

The colours of a task come from its dataset's official colour code (`s5_hf.label_sets`) when the task is a
known dataset with the same classes; custom tasks get distinct generated colours, the same on every call.

Charts (no plotting dependency): `line_chart` (a grid of small curves, e.g. training metrics over steps),
`bar_chart` (grouped bars over bins, e.g. histograms) and `heat_map` (a labelled matrix, e.g. a confusion
matrix); each returns a PIL image, `save_png` writes one atomically. Non-finite values are skipped (curves),
drawn as zero (bars) or grey "n/a" cells (heat maps), never an error.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_path
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
    class_names = task.class_names
    label_set = LABEL_SETS.get(str(task.name).lower())
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


def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` px (the fixed bitmap font when Pillow is built without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def legend(class_names: Sequence[str], palette: np.ndarray, title: str | None = None, font_size: int = 14,
           present: Sequence[int] | None = None) -> Image.Image:
    """A white panel with one colour swatch and name per class. With `present`, only those class ids are listed."""
    ids = list(range(len(class_names))) if present is None else sorted(int(k) for k in present if k < len(class_names))
    text_font = font(font_size)
    line = font_size + 8
    pad, swatch = 8, font_size + 2
    labels = [class_names[k].replace("_", " ") for k in ids]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([measure.textlength(t, font=text_font) for t in labels + ([title] if title else [])], default=0)
    rows = len(ids) + (1 if title else 0)
    panel = Image.new("RGB", (int(3 * pad + swatch + text_width), max(2 * pad + rows * line, 1)), "white")
    draw = ImageDraw.Draw(panel)
    y = pad
    if title:
        draw.text((pad, y), title, fill="black", font=text_font)
        y += line
    for k, text in zip(ids, labels):
        draw.rectangle([pad, y, pad + swatch, y + swatch], fill=tuple(int(c) for c in palette[k]), outline="black")
        draw.text((2 * pad + swatch, y), text, fill="black", font=text_font)
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


# ---- charts -------------------------------------------------------------------------------------------------------
CURVE_COLOR = (31, 119, 180)
SERIES_COLORS = ((160, 160, 160), CURVE_COLOR, (255, 127, 14), (44, 160, 44), (214, 39, 40))
NAN_COLOR = (200, 200, 200)
#: Where a `line_chart` panel's plot area lies inside the panel: (left, top, right, bottom) margins in px.
PLOT_MARGINS = (48, 22, 12, 26)


def put_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, text_font=None, fill="black",
             align: str = "center") -> None:
    """Draw `text` vertically centered on `y`; `x` is its left end, center or right end (`align`)."""
    text_font = text_font or font()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=text_font)
    shift = {"left": left, "center": (left + right) / 2, "right": right}[align]
    draw.text((round(x - shift), round(y - (top + bottom) / 2)), text, fill=fill, font=text_font)


def text_width(text: str, text_font=None) -> int:
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=text_font or font())
    return right - left


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG under a temporary name and rename it (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], panel: tuple[int, int] = (360, 220),
               columns: int = 3) -> Image.Image:
    """One small line chart per series of (x, y) points, `columns` to a row, each scaled to its own range (the
    plot area is the panel minus `PLOT_MARGINS`). Points with a non-finite coordinate are left out; a series
    without any point shows "no data"."""
    width, height = panel
    names = list(series) or ["no data"]
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    canvas = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    small, gray = font(11), (90, 90, 90)
    margin_left, margin_top, margin_right, margin_bottom = PLOT_MARGINS
    for index, name in enumerate(names):
        x0, y0 = (index % columns) * width, (index // columns) * height
        left, top = x0 + margin_left, y0 + margin_top
        right, bottom = x0 + width - margin_right, y0 + height - margin_bottom
        draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
        draw.text((x0 + 6, y0 + 4), name, fill="black", font=small)
        points = np.array([(float(x), float(y)) for x, y in series.get(name, [])], dtype=np.float64).reshape(-1, 2)
        points = points[np.isfinite(points).all(axis=1)]
        if len(points) == 0:
            put_text(draw, (left + right) / 2, (top + bottom) / 2, "no data", small, gray)
            continue
        xs, ys = points[:, 0], points[:, 1]
        x_lo, x_hi = xs.min(), max(xs.max(), xs.min() + 1)
        y_lo, y_hi = ys.min(), ys.max()
        if y_hi - y_lo < 1e-12:
            y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
        px = left + (xs - x_lo) / (x_hi - x_lo) * (right - left)
        py = bottom - (ys - y_lo) / (y_hi - y_lo) * (bottom - top)
        coords = list(zip(px.tolist(), py.tolist()))
        if len(coords) > 1:
            draw.line(coords, fill=CURVE_COLOR, width=2)
        cx, cy = coords[-1]  # the latest value, visible even as a single point
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=CURVE_COLOR)
        draw.text((x0 + 2, top - 2), f"{y_hi:.3g}", fill=gray, font=small)
        draw.text((x0 + 2, bottom - 10), f"{y_lo:.3g}", fill=gray, font=small)
        draw.text((left, bottom + 4), f"step {int(x_lo)}", fill=gray, font=small)
        put_text(draw, right, bottom + 10, f"{int(xs.max())}", small, gray, align="right")
    return canvas


def bar_chart(groups: Mapping[str, Sequence[float]], edges: Sequence[float], *, title: str = "", x_label: str = "",
              y_label: str = "", size: tuple[int, int] = (900, 420), margin: int = 60,
              colors: Sequence[tuple[int, int, int]] = SERIES_COLORS) -> Image.Image:
    """Grouped bars: `groups` maps a legend name to one height per bin, the bins lying between consecutive `edges`
    on the x axis (a histogram is `bar_chart({"name": counts}, bin_edges)`). Bars of a bin stand side by side in
    the order of `groups`, heights scaled to the tallest; non-finite heights are drawn as zero."""
    width, height = size
    heights = {name: np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
               for name, values in groups.items()}
    bins = len(edges) - 1
    for name, values in heights.items():
        if len(values) != bins:
            raise ValueError(f"Group {name!r} has {len(values)} heights for {bins} bins ({len(edges)} edges).")
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    text_font = font(11)
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    top_value = max([float(v.max()) for v in heights.values() if len(v)] + [0.0])
    scale = top_value if top_value > 0 else 1.0
    if bins > 0 and heights:
        bar_w = plot_w / bins
        slot = bar_w / len(heights)
        for series, (values, color) in enumerate(zip(heights.values(), colors)):
            for b, value in enumerate(values):
                x = margin + b * bar_w + series * slot
                y = margin + plot_h * (1 - max(value, 0.0) / scale)
                draw.rectangle([x, y, x + max(slot - 1, 1), margin + plot_h], fill=color)
    else:
        put_text(draw, width / 2, height / 2, "no data", text_font, (90, 90, 90))
    draw.line([margin, margin + plot_h, margin + plot_w, margin + plot_h], fill="black")
    draw.line([margin, margin, margin, margin + plot_h], fill="black")
    if bins > 0:
        low, high = float(edges[0]), float(edges[-1])
        span = high - low if high > low else 1.0
        for tick in np.linspace(low, high, 6):
            x = margin + plot_w * (tick - low) / span
            draw.line([x, margin + plot_h, x, margin + plot_h + 5], fill="black")
            put_text(draw, x, margin + plot_h + 14, f"{tick:.3f}", text_font)
    draw.text((margin, margin + plot_h + 28), x_label, fill="black", font=text_font)
    draw.text((5, margin - 15), f"{y_label} (max {top_value:.3f})" if y_label else "", fill="black", font=text_font)
    draw.text((margin, 10), title, fill="black", font=text_font)
    x = width - margin
    for name, color in reversed(list(zip(heights, colors))):  # the legend, right-aligned
        x -= text_width(name, text_font) + 16 + 12
        draw.rectangle([x, 12, x + 12, 24], fill=color)
        draw.text((x + 16, 12), name, fill="black", font=text_font)
    return canvas


def heat_map(values: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], *,
             cell_text: Sequence[Sequence[str]] | None = None, title: str | None = None, row_title: str = "",
             column_title: str = "", color: tuple[int, int, int] = (8, 48, 107)) -> Image.Image:
    """A labelled matrix: cell (i, j) colored from white (0) to `color` (1) by `values[i, j]` (clipped to [0, 1];
    NaN cells grey, "n/a"), with `cell_text[i][j]` written in it (default: the value, two decimals). Column
    labels and the row title are written vertically (bottom-up)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f"A heat map of {len(row_labels)} rows and {len(column_labels)} columns needs values of "
                         f"that shape, got {values.shape}.")
    rows, columns = values.shape
    if cell_text is None:
        cell_text = [["n/a" if math.isnan(v) else f"{v:.2f}" for v in row] for row in values]
    text_font = font(14)
    pad = 8
    widest = max([text_width(t, text_font) for row in cell_text for t in row] + [text_width("100.0", text_font)])
    cell = max(56, widest + 2 * pad)
    label_width = max([text_width(str(name), text_font) for name in [*row_labels, *column_labels]] + [0]) + 2 * pad
    band = 2 * pad + 14  # height of a line of text with its margins
    title_height = band if title else 0
    left = band + label_width
    top = title_height + band + label_width
    width = max(left + columns * cell, left + text_width(column_title, text_font),
                2 * pad + text_width(title or "", text_font)) + pad
    row_title_length = max(rows * cell, text_width(row_title, text_font) + 2 * pad)
    image = Image.new("RGB", (width, top + row_title_length + pad), "white")
    draw = ImageDraw.Draw(image)
    if title:
        put_text(draw, pad, band / 2, title, text_font, align="left")
    put_text(draw, left, title_height + band / 2, column_title, text_font, align="left")
    # Vertical text is drawn horizontally on a strip and rotated a quarter turn, so it reads bottom-up.
    axis = Image.new("RGB", (row_title_length, band), "white")
    put_text(ImageDraw.Draw(axis), pad, band / 2, row_title, text_font, align="left")
    image.paste(axis.rotate(90, expand=True), (0, top))
    for j, name in enumerate(column_labels):
        strip = Image.new("RGB", (label_width, cell), "white")
        # Left-aligned on the strip: after the rotation the name starts just above its column.
        put_text(ImageDraw.Draw(strip), pad, cell / 2, str(name), text_font, align="left")
        image.paste(strip.rotate(90, expand=True), (left + j * cell, top - label_width))
    for i, name in enumerate(row_labels):
        put_text(draw, left - pad, top + i * cell + cell / 2, str(name), text_font, align="right")
        for j in range(columns):
            x0, y0 = left + j * cell, top + i * cell
            value = values[i, j]
            if math.isnan(value):
                fill, ink = NAN_COLOR, "black"
            else:
                share = min(max(value, 0.0), 1.0)
                fill = tuple(round(255 + share * (c - 255)) for c in color)
                ink = "white" if share > 0.5 else "black"
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=(255, 255, 255))
            put_text(draw, x0 + cell / 2, y0 + cell / 2, cell_text[i][j], text_font, ink)
    return image


__all__ = [
    "PLOT_MARGINS",
    "bar_chart",
    "blend_rows",
    "colorize",
    "font",
    "generated_palette",
    "heat_map",
    "legend",
    "legend_markdown",
    "line_chart",
    "overlay",
    "put_text",
    "save_png",
    "task_palette",
    "text_width",
    "with_legend",
]
