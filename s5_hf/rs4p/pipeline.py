"""The RS4P selection run (the paper's RS4P-1M construction): score, rank, cluster quotas, export; multi-process and resumable.

Stages (`run_selection`):
1. Plan: every process opens the pool and the labeled set and cuts both into chunks (`pool.py`). The main
   process checks `run_config.json` (a resumed run must use the same pool, model and scoring settings),
   lists the chunks without a valid score shard and broadcasts that list.
2. Score: missing chunks are dealt round-robin to the processes; each writes one score shard per chunk
   (`scoring.py`). A killed run keeps every finished shard; the next run scores only the rest.
3. After a barrier the main process merges: K-Means of the labeled features, nearest-prototype assignment
   of the pool, entropy ranking and the quota walk (`kmeans.py`, `selection.py`), then writes the
   selected images with their pseudo-labels, the card, the histogram and `failures.jsonl` (`export.py`,
   `report.py`), and optionally uploads the dataset folder to the Hub.

The selection depends only on the score shards, which depend only on the chunk contents, the model, the
scoring settings and the numeric environment (torch version, device, dtype, intra-op threads; recorded per
shard, and the merge warns when shards differ): the same inputs give the same selection with any number of
processes when every process uses the same thread count (e.g. OMP_NUM_THREADS=2 under torchrun, which
otherwise sets 1). Across environments scores differ in the last bits; ids rarely move.

Output folder:
    run_config.json, run_stats.json     settings the scores were made with; what the last run did
    scores/labeled/, scores/pool/       score shards, chunk-<index>.parquet
    selection.parquet                   the selection in ascending-entropy order (rank, id, cluster, ...)
    dataset/                            the selected dataset: data/*.parquet, README.md (card),
                                        entropy_histogram.png, failures.jsonl, selection_stats.json
    .s5-manifest.json                   what the run wrote (dataset/ has its own manifest)

Every file is written under a temporary name and renamed when complete (`s5_hf.files`); `dataset/` is built
beside the old one and swapped in whole. A run refuses an output folder holding files it did not write
(listed in the error), so it never deletes or overwrites anything else; everything that can be checked
without the model's scores (folder, sizes, model options) is checked before scoring starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env
from tqdm.auto import tqdm

from ..data.shards import DatasetCardInfo, check_output_folder, claim_files, keep_hidden_files
from ..files import (
    atomic_path,
    foreign_entries,
    recover_directory,
    remove_stale_temporaries,
    staged_directory,
    stale_temporaries,
    write_json,
    write_manifest,
    write_text,
)
from ..label_sets import LABEL_SETS
from ..precision import check_precision
from .export import class_share, write_dataset, write_failures
from .kmeans import assign_to_prototypes, spherical_kmeans
from .pool import IMAGE_EXTENSIONS, Chunk, ImagePool, open_pool
from .report import (
    FAILURES_FILE,
    HISTOGRAM_FILE,
    SelectionStats,
    card_description,
    card_notes,
    entropy_summary,
    write_entropy_histogram,
)
from .scoring import SHARD_NAME, TEMPORARY_NAME, ChunkScorer, ScoreStore, ScoringOptions, environment_of
from .selection import select_by_quota

logger = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Manifest kind of a run's output folder, and the files the run writes at its top level.
RUN_KIND = "s5-hf rs4p run"
RUN_FILES = ("run_config.json", "run_stats.json", "selection.parquet")
DATASET_DIR = "dataset"


@dataclass
class SelectionArguments:
    """Arguments of an RS4P selection run (also the command line of `training/select_rs4p.py`)."""

    pool: list[str] = field(metadata={"help": "Pool inputs: image folders (one subfolder per source), SOURCE=FOLDER, "
                                              "Parquet files/folders, saved datasets, or Hub dataset ids."})
    labeled: str = field(metadata={"help": "Labeled set (a saved dataset, Parquet, or Hub id) with an image column."})
    model: str = field(metadata={"help": "Scoring model: folder or Hub id for "
                                         "S5ForSemanticSegmentation.from_pretrained."})
    output_dir: str = field(metadata={"help": "Run folder: score shards, selection and the dataset/ folder."})
    target_size: int = field(default=1_000_000, metadata={"help": "B: images to select (RS4P-1M: 1,000,000)."})
    num_clusters: int = field(default=100, metadata={"help": "M: K-Means clusters of the labeled features (not "
                                                            "published; 100 gives ~390 iSAID crops per cluster)."})
    batch_size: int = field(default=16, metadata={"help": "Images per forward pass."})
    image_size: int = field(default=512, metadata={"help": "Images are resized to this square (bilinear) unless "
                                                          "already that size; pseudo-labels are at this size."})
    chunk_size: int = field(default=1000, metadata={"help": "Images per chunk (the unit of work splitting, score "
                                                           "shards and resuming)."})
    background_id: int = field(default=0, metadata={"help": "Class excluded from the entropy (iSAID background = 0); "
                                                           "negative: exclude none."})
    task: str | None = field(default=None, metadata={"help": "Task (dataset head) of a multi-task model; default: "
                                                            "the model's default task."})
    pool_split: str = field(default="train", metadata={"help": "Split of DatasetDict / Hub pool inputs."})
    labeled_split: str = field(default="train", metadata={"help": "Split of the labeled set."})
    top_up: bool = field(default=False, metadata={"help": "Fill clusters' shortfalls with overflow images in entropy "
                                                         "order (the paper does not)."})
    resume: bool = field(default=True, metadata={"help": "Reuse existing score shards (--no_resume: score everything "
                                                        "again)."})
    seed: int = field(default=0, metadata={"help": "K-Means seed."})
    kmeans_max_iter: int = field(default=100, metadata={"help": "Maximum Lloyd iterations."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype for scoring: float32, bfloat16 or float16."})
    shard_size_mb: int = field(default=500, metadata={"help": "Target size of the output Parquet shards."})
    min_shards: int = field(default=1, metadata={"help": "At least this many output shards (e.g. GPUs x dataloader "
                                                        "workers of the training that reads them)."})
    max_chunks: int | None = field(default=None, metadata={"help": "Stop after scoring this many new chunks per "
                                                                   "process (time-boxed jobs; resume later)."})
    barrier_timeout_minutes: int = field(default=24 * 60, metadata={"help": "How long processes wait for each other."})
    dataset_name: str = field(default="RS4P selection", metadata={"help": "Title of the dataset card."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload output_dir/dataset to the Hub (dataset repo)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Dataset repo id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    # The old name of hub_dataset_id (the result is a dataset, not a model): still accepted, with a warning.
    hub_model_id: str | None = field(default=None, metadata={"help": argparse.SUPPRESS})

    def __post_init__(self):
        if isinstance(self.pool, (str, os.PathLike)):
            self.pool = [self.pool]
        if self.target_size < 1:
            raise ValueError(f"target_size must be positive, got {self.target_size}.")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {self.num_clusters}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}.")
        if self.hub_model_id is not None:
            warnings.warn("hub_model_id (--hub_model_id) is deprecated for the RS4P selection, which publishes a "
                          "dataset: use hub_dataset_id (--hub_dataset_id).", FutureWarning, stacklevel=3)
            if self.hub_dataset_id not in (None, self.hub_model_id):
                raise ValueError(f"Got --hub_dataset_id {self.hub_dataset_id!r} and its deprecated alias "
                                 f"--hub_model_id {self.hub_model_id!r}: pass --hub_dataset_id only.")
            self.hub_dataset_id, self.hub_model_id = self.hub_model_id, None
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id (the dataset repo to upload to).")
        if self.max_chunks is not None and self.max_chunks < 0:
            raise ValueError(f"max_chunks must be non-negative, got {self.max_chunks}.")

    @property
    def background(self) -> int | None:
        return None if self.background_id < 0 else self.background_id


@dataclass
class SelectionOutcome:
    """What `run_selection` did (every process gets one; only the main process merges and exports)."""

    complete: bool
    chunks_total: int
    chunks_reused: int
    chunks_scored: int  # by all processes in this run
    missing_chunks: int = 0  # still unscored when the run stopped (max_chunks)
    dataset_dir: Path | None = None
    stats: SelectionStats | None = None


def _state(args: SelectionArguments) -> PartialState:
    # PartialState only sets up multi-process CPU runs when told it is on CPU; without a GPU that is the
    # only option, and two torchrun processes would otherwise each do the whole job.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=timedelta(minutes=args.barrier_timeout_minutes))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise RuntimeError(
            f"Launched as {launched} processes but accelerate set up {state.num_processes}: every process would "
            "score the whole pool. On CPU set ACCELERATE_USE_CPU=true."
        )
    return state


def _model_identity(model: torch.nn.Module) -> dict:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {
        "name_or_path": str(getattr(model.config, "_name_or_path", "")),
        "config": hashlib.blake2b(model.config.to_json_string(use_diff=False).encode(), digest_size=16).hexdigest(),
        "weights": digest.hexdigest(),
    }


def _run_config(args: SelectionArguments, pool: ImagePool, labeled: ImagePool, model_identity: dict) -> dict:
    """Everything the score shards depend on (batch size and process count do not matter)."""
    return {
        "pool": {"fingerprint": pool.fingerprint(), "images": len(pool), "parts": [p.description for p in pool.parts]},
        "labeled": {"fingerprint": labeled.fingerprint(), "images": len(labeled)},
        "model": model_identity,
        "task": args.task,
        "image_size": args.image_size,
        "chunk_size": args.chunk_size,
        "background_id": args.background,
        "dtype": args.dtype,
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {str(a)[:80]} -> {str(b)[:80]}")
    return out


def check_run_folder(out: Path) -> None:
    """Refuse an output folder holding files a selection run did not write (hidden files excepted): the run
    replaces its own files and never deletes or overwrites anything else."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir {out} is a file: choose a folder for the selection run.")
    dataset = out / DATASET_DIR
    recover_directory(dataset)
    ours = [p.relative_to(out).as_posix() for kind in ("labeled", "pool") for p in
            ((out / "scores" / kind).iterdir() if (out / "scores" / kind).is_dir() else ())
            if SHARD_NAME.match(p.name) or TEMPORARY_NAME.match(p.name)]
    ours += [p.relative_to(out).as_posix() for p in dataset.rglob("*")] if dataset.is_dir() else []
    foreign = foreign_entries(out, RUN_KIND, allowed=ours)
    if foreign:
        listed = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise FileExistsError(
            f"output_dir {out} holds files that a selection run did not write: {listed}. They are never deleted "
            "or replaced: use a new or empty output_dir, or move them away."
        )
    check_output_folder(dataset)  # the dataset folder: only what its manifest lists, the card unedited


def check_before_scoring(args: SelectionArguments, model_config, pool: ImagePool, labeled: ImagePool) -> None:
    """What would otherwise fail only after the whole scoring pass: sizes, and the model options."""
    problems = []
    if len(pool) < args.target_size:
        problems.append(
            f"the pool holds {len(pool)} images, fewer than target_size={args.target_size} (every image would be "
            "selected, which is no selection): lower --target_size or add images"
        )
    if len(labeled) < args.num_clusters:
        problems.append(
            f"the labeled set holds {len(labeled)} images, fewer than num_clusters={args.num_clusters} (K-Means "
            "needs at least one image per cluster): lower --num_clusters"
        )
    if args.target_size < args.min_shards:
        problems.append(f"target_size={args.target_size} is smaller than min_shards={args.min_shards} (every "
                        "output shard needs a row)")
    try:
        task = model_config.get_task(args.task or model_config.default_task)
    except (KeyError, ValueError) as error:
        problems.append(f"--task {args.task!r}: {error}")
    else:
        num_classes = task.num_labels
        if args.background is not None and not 0 <= args.background < num_classes:
            problems.append(f"background_id={args.background_id} is not a class of task {task.name!r} "
                            f"(0..{num_classes - 1}); pass -1 to exclude no class")
    if args.image_size % model_config.patch_size:
        problems.append(f"image_size={args.image_size} is not a multiple of the model's patch size "
                        f"({model_config.patch_size})")
    if problems:
        raise ValueError("Cannot start the selection: " + "; ".join(problems) + ".")


def _plan(args: SelectionArguments, out: Path, config: dict, stores: dict[str, ScoreStore],
          pool: ImagePool, labeled: ImagePool, chunks: dict[str, list[Chunk]]) -> dict[str, list[int]]:
    """Main process: validate or start the run folder; return the chunk indices that still need scoring."""
    check_run_folder(out)
    config_path = out / "run_config.json"
    if config_path.exists() and args.resume:
        previous = json.loads(config_path.read_text())
        changed = _differences(previous, config)
        if changed:
            raise ValueError(
                f"{out} holds scores made with other inputs or settings ({'; '.join(changed[:6])}). Use another "
                "output_dir, or --no_resume to score everything again."
            )
    elif args.resume and any(store.shards() for store in stores.values()):
        raise ValueError(
            f"{out} has score shards but no run_config.json, so what they were scored with is unknown. Use "
            "another output_dir, or --no_resume to score everything again."
        )
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, RUN_KIND, RUN_FILES)  # before the first file it lists
    if not args.resume:
        for store in stores.values():
            store.clear()
    write_json(config_path, config, indent=2)
    missing = {}
    for kind, images in (("labeled", labeled), ("pool", pool)):
        removed = stores[kind].remove_temporaries()
        if removed:
            logger.info(f"Removed {removed} unfinished score shards of an interrupted run ({kind}).")
        missing[kind] = [c.index for c in chunks[kind] if not stores[kind].is_complete(c, images.chunk_ids(c))]
    return missing


def run_selection(args: SelectionArguments, model: torch.nn.Module | None = None) -> SelectionOutcome:
    """Run (or resume) a selection; call it in every process of a `torchrun`/`accelerate launch` job.

    Args:
        args: the run's arguments.
        model: an already loaded scoring model (otherwise `args.model` is loaded).
    """
    state = _state(args)
    # A dtype the device does not run natively (bf16 on a CPU without AVX-512 BF16/AMX runs ~500x slower) falls
    # back to float32 with a warning; the run's config records the dtype actually used.
    dtype = check_precision(state.device, args.dtype)
    if dtype != args.dtype:
        args = dataclasses.replace(args, dtype=dtype)
    out = Path(args.output_dir)
    if model is None:
        from .. import S5ForSemanticSegmentation

        model = S5ForSemanticSegmentation.from_pretrained(args.model)
    identity = _model_identity(model)
    pool = open_pool(args.pool, split=args.pool_split)
    labeled = open_pool([args.labeled], split=args.labeled_split, default_source="labeled")
    for name, images, given in (("pool", pool, args.pool), ("labeled set", labeled, [args.labeled])):
        if len(images) == 0:
            raise ValueError(
                f"The {name} holds no images ({', '.join(map(str, given))}). Image folders need "
                f"PATH/<source>/**/<image> with one of the extensions {sorted(IMAGE_EXTENSIONS)}; Parquet and "
                "datasets need rows with an 'image' column."
            )
    check_before_scoring(args, model.config, pool, labeled)
    chunks = {"pool": pool.chunks(args.chunk_size), "labeled": labeled.chunks(args.chunk_size)}
    stores = {kind: ScoreStore(out / "scores" / kind) for kind in chunks}
    config = _run_config(args, pool, labeled, identity)

    plan: list = [None]
    failure = None
    if state.is_main_process:
        try:
            plan = [{"missing": _plan(args, out, config, stores, pool, labeled, chunks), "config": config}]
        except Exception as error:
            failure = error
            plan = [{"error": f"{type(error).__name__}: {error}"}]
    broadcast_object_list(plan)
    plan = plan[0]
    if failure is not None:
        raise failure
    if "error" in plan:
        raise RuntimeError(f"Selection run set-up failed on the main process: {plan['error']}")
    if _differences(plan["config"], config):
        raise RuntimeError(
            f"Process {state.process_index} sees different inputs than the main process "
            f"({'; '.join(_differences(plan['config'], config)[:4])}): is the pool changing during the run?"
        )
    missing = plan["missing"]
    total = sum(len(c) for c in chunks.values())
    num_missing = sum(len(m) for m in missing.values())
    logger.info(
        f"{len(pool)} pool images and {len(labeled)} labeled images in {total} chunks; {total - num_missing} already "
        f"scored, {num_missing} to score on {state.num_processes} process(es)."
    )

    # Labeled chunks first: they are few, and the main process needs all of them to start merging.
    work = [("labeled", i) for i in missing["labeled"]] + [("pool", i) for i in missing["pool"]]
    mine = work[state.process_index::state.num_processes]
    scored = _score_chunks(args, model, state, mine, pool, labeled, chunks, stores)
    logger.info(f"process {state.process_index} scored {scored} chunks", main_process_only=False)

    state.wait_for_everyone()
    scored_total = sum(gather_object([scored]))
    still_missing = [c for kind in chunks for c in chunks[kind] if not stores[kind].path(c.index).exists()]
    outcome = SelectionOutcome(
        complete=not still_missing, chunks_total=total, chunks_reused=total - num_missing,
        chunks_scored=scored_total, missing_chunks=len(still_missing),
    )
    if state.is_main_process:
        write_json(out / "run_stats.json",
                   {k: v for k, v in asdict(outcome).items() if k in ("complete", "chunks_total", "chunks_reused",
                                                                       "chunks_scored", "missing_chunks")}, indent=2)
    if still_missing:
        logger.warning(f"{len(still_missing)} chunks are not scored yet (max_chunks): run again to resume.")
        return outcome
    if state.is_main_process:
        outcome.dataset_dir, outcome.stats = _merge_and_export(args, out, model.config, pool, labeled, chunks, stores)
        if args.push_to_hub:
            _push(args, outcome.dataset_dir)
    return outcome


def _band_processor(args, model):
    """None for an RGB model (8-bit RGB pools with the paper's constants, as always); for any other band count the
    processor saved with the model, whose per-band normalization the pool images must go through."""
    if model.config.num_channels == 3:
        return None
    from ..image_processing_s5 import S5ImageProcessor

    try:
        return S5ImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        raise ValueError(f"{args.model}: the model takes {model.config.num_channels} bands, so scoring needs the "
                         f"image processor saved with it (its per-band normalization): {error}") from error


def _score_chunks(args, model, state, mine, pool, labeled, chunks, stores) -> int:
    device = state.device if state.device.type != "cpu" else torch.device("cpu")
    options = ScoringOptions(image_size=args.image_size, batch_size=args.batch_size,
                             background_id=args.background, task=args.task)
    processor = _band_processor(args, model)
    scorers = {
        "pool": ChunkScorer(model, options, device=device, dtype=DTYPES[args.dtype], processor=processor),
        "labeled": ChunkScorer(model, ScoringOptions(**{**asdict(options), "features_only": True}),
                               device=device, dtype=DTYPES[args.dtype], processor=processor),
    }
    sources = {"pool": pool, "labeled": labeled}
    limit = len(mine) if args.max_chunks is None else min(args.max_chunks, len(mine))
    progress = tqdm(total=limit, desc=f"scoring (process {state.process_index})", unit="chunk",
                    disable=not state.is_local_main_process)
    for kind, index in mine[:limit]:
        chunk = chunks[kind][index]
        table = scorers[kind].score(sources[kind].read_chunk(chunk))
        if table.num_rows != chunk.size:  # a reader bug must never shift rows between images
            raise RuntimeError(f"{kind} chunk {index}: {table.num_rows} score rows for {chunk.size} images.")
        stores[kind].write(index, table)
        progress.update(1)
        progress.set_postfix(images=scorers["pool"].images_scored + scorers["labeled"].images_scored)
    progress.close()
    return limit


@dataclass
class _PoolScores:
    ids: np.ndarray
    sources: np.ndarray
    ok: np.ndarray
    entropy: np.ndarray
    confidence: np.ndarray
    features: np.ndarray | None  # float16 (N, D), zeros for failed images; None when assigned while reading
    clusters: np.ndarray | None  # int64 (N,) nearest prototype (0 for failed images), when assigned while reading
    class_counts: np.ndarray
    chunk: np.ndarray
    row: np.ndarray
    errors: list[tuple[int, str]]  # (position, reason)
    environments: Counter  # scoring environment (see scoring_environment) -> shards made under it


def _valid_rows(column: pa.FixedSizeListArray, valid: np.ndarray) -> np.ndarray:
    """The non-null rows of a fixed-size-list column as a 2-d array."""
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    if len(values) == len(column) * width and not valid.all():  # a pyarrow that keeps the null rows' slots
        values = values.reshape(len(column), width)[valid]
    return values.reshape(-1, width)


def _read_scores(store: ScoreStore, chunks: list[Chunk], feature_dim: int, with_scores: bool,
                 centroids: torch.Tensor | None = None) -> _PoolScores:
    """Concatenate the score shards' small columns.

    Without `centroids` the features go into one preallocated `(N, D)` float16 array (the labeled set, for
    K-Means). With `centroids` each shard's features are assigned to their nearest prototype as the shard is
    read and then dropped, so the merge holds O(N) scalars, never the `(N, D)` features of the whole pool.
    """
    total = sum(c.size for c in chunks)
    features = None if centroids is not None else np.zeros((total, feature_dim), dtype=np.float16)
    clusters = np.zeros(total, dtype=np.int64) if centroids is not None else None
    ids, sources, errors, entropy, confidence, counts, chunk_of, row_of = [], [], [], [], [], [], [], []
    environments: Counter = Counter()
    position = 0
    columns = ["id", "source", "error", "feature"] + (["entropy", "confidence", "class_counts"] if with_scores else [])
    for chunk in tqdm(chunks, desc="reading scores", unit="chunk", leave=False):
        table = pq.read_table(store.path(chunk.index), columns=columns)
        environments[environment_of(table.schema)] += 1
        n = table.num_rows
        feature = table.column("feature").combine_chunks()
        valid = np.asarray(feature.is_valid())
        if valid.any():
            block = _valid_rows(feature, valid)
            if clusters is not None:
                clusters[position + np.flatnonzero(valid)] = assign_to_prototypes(block, centroids)[0]
            else:
                features[position + np.flatnonzero(valid)] = block
        ids += table.column("id").to_pylist()
        sources += table.column("source").to_pylist()
        for offset, error in enumerate(table.column("error").to_pylist()):
            if error is not None:
                errors.append((position + offset, error))
        if with_scores:
            entropy.append(table.column("entropy").to_numpy(zero_copy_only=False))
            confidence.append(table.column("confidence").to_numpy(zero_copy_only=False))
            class_counts = table.column("class_counts").combine_chunks()
            block = np.zeros((n, class_counts.type.list_size), dtype=np.int64)
            scored = np.asarray(class_counts.is_valid())
            block[scored] = _valid_rows(class_counts, scored)
            counts.append(block)
        chunk_of.append(np.full(n, chunk.index, dtype=np.int32))
        row_of.append(np.arange(n, dtype=np.int32))
        position += n
    ok = np.ones(total, dtype=bool)
    ok[[p for p, _ in errors]] = False
    return _PoolScores(
        ids=np.asarray(ids, dtype=object), sources=np.asarray(sources, dtype=object), ok=ok,
        entropy=np.concatenate(entropy).astype(np.float64) if entropy else np.full(total, np.nan),
        confidence=np.concatenate(confidence).astype(np.float64) if confidence else np.full(total, np.nan),
        features=features, clusters=clusters,
        class_counts=np.concatenate(counts) if counts else np.zeros((total, 0), np.int64),
        chunk=np.concatenate(chunk_of) if chunk_of else np.zeros(0, np.int32),
        row=np.concatenate(row_of) if row_of else np.zeros(0, np.int32), errors=errors, environments=environments,
    )


def _merge_and_export(args, out: Path, config, pool, labeled, chunks, stores) -> tuple[Path, SelectionStats]:
    feature_dim = config.hidden_size
    task = config.get_task(args.task or config.default_task)

    labeled_scores = _read_scores(stores["labeled"], chunks["labeled"], feature_dim, with_scores=False)
    if labeled_scores.errors:
        logger.warning(f"{len(labeled_scores.errors)} labeled images could not be scored and are left out of the "
                       f"clustering ({_reason_counts(labeled_scores.errors)}; listed in failures.jsonl).")
    labeled_features = labeled_scores.features[labeled_scores.ok]
    if len(labeled_features) < args.num_clusters:
        raise ValueError(
            f"Only {len(labeled_features)} of {len(labeled_scores.ok)} labeled images could be scored, fewer than "
            f"num_clusters={args.num_clusters}; the others failed with: {_reason_counts(labeled_scores.errors)}. "
            "Lower --num_clusters or fix the labeled set."
        )
    logger.info(f"K-Means of {len(labeled_features)} labeled features into {args.num_clusters} clusters.")
    kmeans = spherical_kmeans(labeled_features, args.num_clusters, seed=args.seed, max_iter=args.kmeans_max_iter)

    scores = _read_scores(stores["pool"], chunks["pool"], feature_dim, with_scores=True, centroids=kmeans.centroids)
    candidates = np.flatnonzero(scores.ok)
    clusters = scores.clusters
    environments = labeled_scores.environments + scores.environments
    if len(environments) > 1:
        logger.warning(
            f"The score shards were made under {len(environments)} different numeric environments "
            f"({'; '.join(f'{n} shards: {env}' for env, n in environments.most_common())}). Scores, and so the "
            "ranking, are bit-for-bit reproducible only with the same torch version, device, dtype and intra-op "
            "thread count (torchrun sets OMP_NUM_THREADS=1 unless told otherwise)."
        )
    logger.info(f"Ranking {len(candidates)} candidates ({len(scores.errors)} pool images failed).")
    result = select_by_quota(
        scores.entropy[candidates], scores.ids[candidates], clusters[candidates], kmeans.counts.numpy(),
        args.target_size, top_up=args.top_up,
    )
    picked = candidates[result.selected]  # positions in the pool, ascending-entropy order

    selection = pa.table({
        "rank": pa.array(np.arange(len(picked)), pa.int64()),
        "id": pa.array(scores.ids[picked].tolist(), pa.string()),
        "source": pa.array(scores.sources[picked].tolist(), pa.string()),
        "entropy": scores.entropy[picked],
        "confidence": scores.confidence[picked],
        "cluster": pa.array(clusters[picked], pa.int32()),
        "top_up": result.top_up,
        "chunk": scores.chunk[picked],
        "row": scores.row[picked],
    })
    with atomic_path(out / "selection.parquet") as temporary:
        pq.write_table(selection, temporary)

    failures = [
        {"id": found.ids[p], "source": found.sources[p], "reason": reason, "set": name, "chunk": int(found.chunk[p])}
        for name, found in (("pool", scores), ("labeled", labeled_scores))
        for p, reason in found.errors
    ]
    stats = _statistics(args, task, scores, candidates, picked, clusters, result, kmeans, environments)
    label_set = task.name if task.name in LABEL_SETS else None
    card = DatasetCardInfo(
        pretty_name=args.dataset_name,
        description=card_description(stats),
        license="other",
        license_name="source-datasets",
        license_note="Each image keeps the licence of its source dataset (see the `source` column); the masks are "
                     "predictions of the scoring model.",
        label_set=label_set,
        tags=["remote-sensing", "semantic-segmentation", "s5", "rs4p", "pseudo-labels", "semi-supervised"],
        notes=card_notes(stats),
    )
    final = out / DATASET_DIR
    for staged in stale_temporaries(final, "partial"):  # folders of a killed export, and the shard writer's inside
        remove_stale_temporaries(staged, "partial")
    remove_stale_temporaries(final, "partial")
    check_output_folder(final)  # again: the folder may have changed while the pool was scored
    # The whole folder is built beside the old one and swapped in: a reader never sees a mix of two runs.
    with staged_directory(final) as staging:
        keep_hidden_files(final, staging)
        write_dataset(pool, chunks["pool"], stores["pool"], out / "selection.parquet", args.image_size, staging,
                      card, shard_size_mb=args.shard_size_mb, min_shards=args.min_shards, label_set=label_set)
        write_failures(failures, staging / FAILURES_FILE)
        write_entropy_histogram(scores.entropy[candidates], scores.entropy[picked], staging / HISTOGRAM_FILE)
        write_text(staging / "selection_stats.json", stats.to_json())
        claim_files(staging, [FAILURES_FILE, HISTOGRAM_FILE, "selection_stats.json"])
    logger.info(f"Selected {len(picked)} images -> {final}")
    return final, stats


def _reason_counts(errors: list[tuple[int, str]], limit: int = 5) -> str:
    """'N x reason' for the most common failure reasons."""
    counts = Counter(reason for _, reason in errors).most_common()
    text = ", ".join(f"{n} x {reason!r}" for reason, n in counts[:limit])
    return text + (f", and {len(counts) - limit} other reasons" if len(counts) > limit else "") if counts else "none"


def _statistics(args, task, scores: _PoolScores, candidates, picked, clusters, result, kmeans,
                environments: Counter) -> SelectionStats:
    per_source: dict[str, dict[str, int]] = {}
    for name, key in ((scores.sources[candidates], "scored"), (scores.sources[~scores.ok], "failed"),
                      (scores.sources[picked], "selected")):
        values, counts = np.unique(name.astype(str), return_counts=True) if len(name) else ([], [])
        for value, count in zip(values, counts):
            per_source.setdefault(str(value), {"scored": 0, "failed": 0, "selected": 0})[key] = int(count)
    quota_table = [
        {"cluster": m, "labeled": int(kmeans.counts[m]), "quota": int(result.quotas[m]),
         "available": int(result.available[m]), "accepted": int(result.accepted[m])}
        for m in range(len(result.quotas))
    ]
    parameters = {
        "name": args.dataset_name, "target_size": args.target_size, "num_clusters": args.num_clusters,
        "top_up": args.top_up, "image_size": args.image_size, "background_id": args.background,
        "task": task.name, "model": args.model, "seed": args.seed, "labeled": str(args.labeled),
        "pool": [str(p) for p in args.pool], "feature": "mean of last-block patch tokens, L2-normalised",
        "ranking": "ascending foreground entropy, ties by id",
        "quota_rounding": "largest remainder (quotas sum to target_size)", "kmeans_max_iter": args.kmeans_max_iter,
        "chunk_size": args.chunk_size, "dtype": args.dtype,
        "scoring_environment": "; ".join(f"{env} ({n} shards)" if len(environments) > 1 else env
                                         for env, n in environments.most_common()),
    }
    return SelectionStats(
        parameters=parameters,
        per_source=per_source,
        class_share=class_share(scores.class_counts[picked].sum(axis=0), task.id2label),
        quota_table=quota_table,
        entropy_summary={"pool": entropy_summary(scores.entropy[candidates]),
                         "selected": entropy_summary(scores.entropy[picked])},
        num_scored=len(candidates), num_failed=int((~scores.ok).sum()), num_selected=len(picked),
        shortfall=int(result.shortfall), num_top_up=int(result.top_up.sum()),
        kmeans={"clusters": args.num_clusters, "iterations": kmeans.num_iterations, "converged": kmeans.converged,
                "inertia": round(kmeans.inertia, 4), "seed": args.seed},
    )


def _push(args: SelectionArguments, folder: Path) -> None:
    # The one publishing path: it checks the folder streams with `datasets`, and its commit deletes the shards of
    # an earlier push that this one does not replace (otherwise they would be read as duplicated rows).
    from ..hub.publish import publish_dataset

    result = publish_dataset(folder, args.hub_dataset_id, private=args.hub_private, commit_message="RS4P selection")
    logger.info(f"Uploaded {folder} to the Hub dataset repo {args.hub_dataset_id}: {result['commit_url']}")


__all__ = ["SelectionArguments", "SelectionOutcome", "run_selection"]
