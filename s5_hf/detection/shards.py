"""Detection rows as `datasets` datasets, for Parquet shards (`s5_hf.data.to_parquet_shards`) and back.

Columns: `image` (Image), `boxes` (list of [cx, cy, w, h, angle], float32), `labels` (int64), `difficult` (bool),
`id`, `source` (`dior` / `dota`), and for DOTA patches `image_id` with the patch offset `offset_x`, `offset_y`
(0 for whole images), so patch detections can be merged back onto the full image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
from PIL import Image


def detection_features() -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "boxes": datasets.List(datasets.List(datasets.Value("float32"))),
        "labels": datasets.List(datasets.Value("int64")),
        "difficult": datasets.List(datasets.Value("bool")),
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "offset_x": datasets.Value("int32"),
        "offset_y": datasets.Value("int32"),
    })


def detection_dataset(rows: Iterable[dict], source: str) -> datasets.Dataset:
    """A `datasets.Dataset` of reader rows (`read_dior_r` / `read_dota` output)."""
    rows = list(rows)
    for row in rows:  # checked before `datasets` runs the generator (it would wrap the error)
        boxes = np.asarray(row.get("boxes", np.zeros((0, 5))), np.float32).reshape(-1, 5)
        if not np.isfinite(boxes).all():
            raise ValueError(f"Row {row['id']!r}: boxes hold NaN or infinite values.")
        if len(np.asarray(row.get("labels", []))) != len(boxes):
            raise ValueError(f"Row {row['id']!r}: {len(boxes)} boxes but {len(np.asarray(row['labels']))} labels.")

    def generate():
        for row in rows:
            boxes = np.asarray(row.get("boxes", np.zeros((0, 5))), np.float32).reshape(-1, 5)
            left, top = row.get("offset", (0, 0))
            yield {"image": Image.fromarray(row["image"]), "boxes": boxes.tolist(),
                   "labels": np.asarray(row.get("labels", []), np.int64).tolist(),
                   "difficult": np.asarray(row.get("difficult", np.zeros(len(boxes), bool)), bool).tolist(),
                   "id": row["id"], "source": source, "image_id": row.get("image_id", row["id"]),
                   "offset_x": int(left), "offset_y": int(top)}

    return datasets.Dataset.from_generator(generate, features=detection_features())


def is_shard_folder(location: str | Path) -> bool:
    """A folder of Parquet shards (`to_parquet_shards` output: `data/*.parquet` or `*.parquet`)."""
    path = Path(location)
    return path.is_dir() and (any(path.glob("data/*.parquet")) or any(path.glob("*.parquet")))


def read_detection_shards(location: str | Path, split: str, source: str, classes: Sequence[str]) -> Iterator[dict]:
    """Reader-style rows of `split` from a shard folder of `source` rows (as `read_dior_r` / `read_dota` give, DOTA
    already cut into patches), with every row checked: its `source` and its labels within `classes`."""
    try:
        dataset = datasets.load_dataset(str(location), split=split)
    except ValueError as error:  # datasets' "Unknown split" and similar
        raise ValueError(f"{location}: cannot load split {split!r} of the detection shards: {error}") from error
    missing = set(detection_features()) - set(dataset.column_names)
    if missing:
        raise ValueError(f"{location}: not detection shards (no {sorted(missing)} column): write them with "
                         "s5_hf.detection.shards.detection_dataset.")
    for row, stored in zip(rows_from_dataset(dataset), dataset.select_columns(["source"])):
        if stored["source"] != source:
            raise ValueError(f"{location}: row {row['id']!r} holds {stored['source']!r} boxes, not {source!r}.")
        bad = row["labels"][(row["labels"] < 0) | (row["labels"] >= len(classes))]
        if len(bad):
            raise ValueError(f"{location}: row {row['id']!r} has label {int(bad[0])}, outside the {len(classes)} "
                             f"classes of {source}.")
        yield row


def rows_from_dataset(dataset: Iterable[dict]) -> Iterable[dict]:
    """Reader-style rows (numpy image and boxes) from a detection dataset (e.g. shards loaded back)."""
    for row in dataset:
        yield {"id": row["id"], "image_id": row["image_id"], "offset": (row["offset_x"], row["offset_y"]),
               "image": np.asarray(row["image"].convert("RGB")),
               "boxes": np.asarray(row["boxes"], np.float32).reshape(-1, 5),
               "labels": np.asarray(row["labels"], np.int64), "difficult": np.asarray(row["difficult"], bool)}
