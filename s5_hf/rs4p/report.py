"""What a selection run reports: statistics, the entropy histogram (PNG, Pillow only) and the dataset card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_path

HISTOGRAM_FILE = "entropy_histogram.png"
FAILURES_FILE = "failures.jsonl"


@dataclass
class SelectionStats:
    """Numbers the card shows; everything is plain Python so it also goes to `selection_stats.json`."""

    parameters: dict
    per_source: dict[str, dict[str, int]]  # source -> {"scored", "failed", "selected"}
    class_share: dict[str, float]  # class name -> share of selected pseudo-label pixels
    quota_table: list[dict[str, int]]  # per cluster: labeled, quota, available, accepted
    entropy_summary: dict[str, dict[str, float]]  # "pool"/"selected" -> quantiles
    num_scored: int
    num_failed: int
    num_selected: int
    shortfall: int
    num_top_up: int
    kmeans: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def entropy_summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"count": 0}
    quantiles = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"count": int(len(values)), "mean": float(values.mean()),
            **{name: float(q) for name, q in zip(("min", "p05", "median", "p95", "max"), quantiles)}}


def write_entropy_histogram(pool: np.ndarray, selected: np.ndarray, path: str | Path, bins: int = 40) -> Path:
    """Pool vs. selected entropy distributions (each as a share of its own count) as a bar chart PNG."""
    width, height, margin = 900, 420, 60
    low = float(pool.min()) if len(pool) else 0.0
    high = float(pool.max()) if len(pool) else 1.0
    if high <= low:
        high = low + 1e-6
    edges = np.linspace(low, high, bins + 1)
    shares = []
    for values in (pool, selected):
        counts, _ = np.histogram(values, bins=edges)
        shares.append(counts / max(1, counts.sum()))
    top = max(float(max(s.max() for s in shares)), 1e-9)

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    bar_w = plot_w / bins
    colors = ((160, 160, 160), (31, 119, 180))
    for series, (share, color) in enumerate(zip(shares, colors)):
        for b, value in enumerate(share):
            x0 = margin + b * bar_w + series * bar_w / 2
            y0 = margin + plot_h * (1 - value / top)
            draw.rectangle([x0, y0, x0 + bar_w / 2 - 1, margin + plot_h], fill=color)
    draw.line([margin, margin + plot_h, margin + plot_w, margin + plot_h], fill="black")
    draw.line([margin, margin, margin, margin + plot_h], fill="black")
    for tick in np.linspace(low, high, 6):
        x = margin + plot_w * (tick - low) / (high - low)
        draw.line([x, margin + plot_h, x, margin + plot_h + 5], fill="black")
        draw.text((x - 15, margin + plot_h + 8), f"{tick:.3f}", fill="black", font=font)
    draw.text((margin, margin + plot_h + 28), "foreground entropy E(x)", fill="black", font=font)
    draw.text((5, margin - 15), f"share of images (max {top:.3f})", fill="black", font=font)
    title = f"Entropy: pool ({len(pool)} scored) vs. selected ({len(selected)})"
    draw.text((margin, 10), title, fill="black", font=font)
    for series, (label, color) in enumerate(zip(("pool", "selected"), colors)):
        x = width - margin - 150 + series * 75
        draw.rectangle([x, 12, x + 12, 24], fill=color)
        draw.text((x + 16, 12), label, fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def card_description(stats: SelectionStats) -> str:
    """The card's opening paragraph: what the dataset is and how it was made, in numbers."""
    target = stats.parameters["target_size"]
    return (
        "Unlabeled remote-sensing images with pseudo-labels, selected by the RS4P procedure of S5 (arXiv "
        "2508.12409): a segmentation model scores every pool image, the images are ranked by ascending "
        "foreground entropy, and they are accepted in that order while their cluster's quota (proportional to "
        "the labeled set's K-Means clusters) is not full.\n\n"
        f"Selected **{stats.num_selected}** of {stats.num_scored} scored images (target {target}); "
        f"{stats.num_failed} pool images could not be scored (listed in `{FAILURES_FILE}`)."
        + (f" Shortfall: {stats.shortfall} (clusters with fewer candidates than their quota)."
           if stats.shortfall else "")
        + (f" {stats.num_top_up} images filled shortfalls (top-up)." if stats.num_top_up else "")
    )


def card_notes(stats: SelectionStats) -> str:
    """The selection-specific sections of the card (parameters, sources, classes, entropy, quotas)."""
    p = stats.parameters
    parts = ["## Selection columns\n\n" + _table(("column", "meaning"), [
        ("image", "the pool image: original file bytes, or PNG if it was resized to image_size"),
        ("mask", "pseudo-label: argmax class ids of the scoring model at image_size, PNG"),
        ("entropy", "foreground entropy E(x), background excluded"),
        ("confidence", "mean max-softmax probability"),
        ("cluster", "diversity cluster (nearest labeled prototype)"),
        ("rank", "position in ascending-entropy order among the selected images"),
        ("top_up", "accepted to fill another cluster's shortfall (only with top_up)"),
    ])]
    parts.append("## Selection parameters\n\n" + _table(("parameter", "value"), sorted(
        (k, f"`{v}`") for k, v in p.items() if k != "name")))
    source_rows = [(s, c["scored"], c["failed"], c["selected"]) for s, c in sorted(stats.per_source.items())]
    parts.append("## Images per source\n\n" + _table(("source", "scored", "failed", "selected"), source_rows))
    share_rows = [(name, f"{100 * share:.2f}%") for name, share in stats.class_share.items()]
    parts.append("## Pseudo-label pixel share (selected images)\n\n" + _table(("class", "share"), share_rows))
    summary_rows = [(name, *(f"{s.get(k, float('nan')):.4f}" for k in ("min", "p05", "median", "mean", "p95", "max")))
                    for name, s in stats.entropy_summary.items() if s.get("count")]
    parts.append(
        "## Entropy\n\n"
        f"![entropy histogram]({HISTOGRAM_FILE})\n\n"
        + _table(("set", "min", "p05", "median", "mean", "p95", "max"), summary_rows)
    )
    quota_rows = [(r["cluster"], r["labeled"], r["quota"], r["available"], r["accepted"]) for r in stats.quota_table]
    parts.append(
        "## Cluster quotas\n\n"
        f"K-Means of the labeled images' features: {stats.kmeans}.\n\n"
        + _table(("cluster", "labeled N_m", "quota B_m", "candidates", "selected"), quota_rows)
    )
    return "\n\n".join(parts) + "\n"


__all__ = ["FAILURES_FILE", "HISTOGRAM_FILE", "SelectionStats", "card_description", "card_notes",
           "entropy_summary", "write_entropy_histogram"]
