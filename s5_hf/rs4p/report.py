"""What a selection run reports: statistics, the entropy histogram (PNG, Pillow only) and the dataset card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..visualize import bar_chart, save_png

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
    low = float(pool.min()) if len(pool) else 0.0
    high = float(pool.max()) if len(pool) else 1.0
    if high <= low:
        high = low + 1e-6
    edges = np.linspace(low, high, bins + 1)
    shares = {}
    for name, values in (("pool", pool), ("selected", selected)):
        counts, _ = np.histogram(values, bins=edges)
        shares[name] = counts / max(1, counts.sum())
    chart = bar_chart(shares, edges, title=f"Entropy: pool ({len(pool)} scored) vs. selected ({len(selected)})",
                      x_label="foreground entropy E(x)", y_label="share of images")
    return save_png(chart, path)


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
