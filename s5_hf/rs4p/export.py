"""Writing the selected images with their pseudo-labels as a Parquet dataset (the shared shard writer).

Rows come out in pool order (chunk by chunk), so the pool and the score shards are each read once,
sequentially, whatever the pool's size; the selection order is the `rank` column (and `selection.parquet`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from ..data.shards import DatasetCardInfo, to_parquet_shards
from ..files import atomic_write
from .pool import Chunk, ImagePool
from .scoring import ScoreStore, decode_image, image_digest


def selection_features() -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "entropy": datasets.Value("float64"),
        "confidence": datasets.Value("float64"),
        "cluster": datasets.Value("int32"),
        "rank": datasets.Value("int64"),
        "top_up": datasets.Value("bool"),
    })


def stored_image(data: bytes, image_size: int) -> bytes:
    """The bytes to store for a selected image: the original file if it is `image_size` square (the usual
    512 px patch, no re-encoding), otherwise the resized RGB image the model saw, as PNG, so image and
    pseudo-label always align pixel for pixel."""
    with Image.open(io.BytesIO(data)) as image:
        if image.size == (image_size, image_size):
            return data
    pixels, _ = decode_image(data, image_size)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def iter_selected_rows(
    pool: ImagePool, chunks: list[Chunk], store: ScoreStore, selection_path: str | os.PathLike, image_size: int
) -> Iterator[dict]:
    """Rows of the output dataset, in pool order.

    Args:
        selection_path: `selection.parquet` (columns chunk, row, cluster, rank, top_up).
    """
    selection = pq.read_table(selection_path, columns=["chunk", "row", "cluster", "rank", "top_up"])
    picks: dict[int, list[tuple]] = {}  # chunk -> [(row, cluster, rank, top_up)], rows ascending
    for chunk, row, cluster, rank, top_up in zip(*(selection.column(c).to_pylist() for c in selection.column_names)):
        picks.setdefault(chunk, []).append((row, cluster, rank, top_up))
    for rows in picks.values():
        rows.sort()
    progress = tqdm(total=selection.num_rows, desc="writing selected images", unit="img")
    for chunk in chunks:
        chosen = picks.get(chunk.index)
        if not chosen:
            continue
        rows = [row for row, *_ in chosen]
        columns = ["id", "entropy", "confidence", "pseudo_label", "digest"]
        scores = pq.read_table(store.path(chunk.index), columns=columns).take(pa.array(rows)).to_pylist()
        raws = pool.parts[chunk.part].read_rows([chunk.start + row for row in rows])
        for (row, cluster, rank, top_up), score, raw in zip(chosen, scores, raws):
            if raw.id != score["id"]:
                raise RuntimeError(
                    f"Chunk {chunk.index} row {row}: the pool has {raw.id!r} but the score shard {score['id']!r}."
                )
            if raw.data is None or image_digest(raw.data) != score["digest"]:
                raise RuntimeError(
                    f"Selected image {raw.id!r} ({raw.source}) "
                    + (f"can no longer be read: {raw.error}" if raw.data is None else "changed since it was scored")
                    + f". Restore it, or delete its score shard {store.path(chunk.index)} and run again to re-score."
                )
            yield {
                "image": {"bytes": stored_image(raw.data, image_size), "path": None},
                "mask": {"bytes": score["pseudo_label"], "path": None},
                "id": raw.id,
                "source": raw.source,
                "entropy": score["entropy"],
                "confidence": score["confidence"],
                "cluster": cluster,
                "rank": rank,
                "top_up": top_up,
            }
            progress.update(1)
    progress.close()


def write_dataset(
    pool: ImagePool,
    chunks: list[Chunk],
    store: ScoreStore,
    selection_path: str | os.PathLike,
    image_size: int,
    out_dir: str | os.PathLike,
    card: DatasetCardInfo,
    shard_size_mb: float = 500,
    min_shards: int = 1,
    label_set: str | None = None,
) -> list[Path]:
    """Stream the selected rows through `s5_hf.data.to_parquet_shards` into `out_dir` (data/ shards + card).

    `label_set` names the classes of the pseudo-labels, so the writer validates them and tables the
    classes; without one (a model whose task is not a known label set) masks are not validated.
    """
    rows = partial(iter_selected_rows, pool, chunks, store, str(selection_path), image_size)
    dataset = datasets.IterableDataset.from_generator(rows, features=selection_features())
    return to_parquet_shards(dataset, out_dir, shard_size_mb, card=card, min_shards=min_shards, split="train",
                             label_set=label_set, validate=label_set is not None)


def write_failures(failures: Iterable[dict], path: str | os.PathLike) -> int:
    """One JSON object per failed image: id, source, reason, chunk (written atomically)."""
    count = 0
    with atomic_write(path, "w") as handle:
        for failure in failures:
            handle.write(json.dumps(failure) + "\n")
            count += 1
    return count


def class_share(counts: np.ndarray, id2label: Mapping[int, str]) -> dict[str, float]:
    total = counts.sum()
    return {id2label[k]: float(counts[k] / total) if total else 0.0 for k in range(len(counts))}


__all__ = ["iter_selected_rows", "selection_features", "stored_image", "write_dataset", "write_failures"]
