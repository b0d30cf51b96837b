"""S4P: semi-supervised segmentation pretraining of S5 (FixMatch/UniMatch form, as in the paper).

    accelerate launch training/pretrain_s4p.py \
        --labeled isaid=/data/iSAID --unlabeled rs4p=/data/rs4p-1m --output_dir runs/s4p-vit-b
    accelerate launch training/pretrain_s4p.py configs/s4p_vit_b.yaml       # the same run from a config file

Each step: a labeled batch (weak augmentation) with cross-entropy; an unlabeled batch u and an independent partner
batch u_mix. The same network, in eval mode and without gradients, predicts the weak views of both: pseudo-label =
argmax, confidence = max softmax. u's strong view gets u_mix's strong view pasted inside its CutMix box (and the box
takes u_mix's pseudo-labels). loss_u = CE on the strong view where confidence >= 0.95, over the valid pixels;
total = (loss_x + loss_u) / 2. AdamW (lr 5e-5, weight decay 0.01 on every parameter), cosine to 0.

The defaults are the official run's (crop 512, batch 12 + 12 per process, 120k steps, validation every 2000).
No EMA teacher, no rotation: as the official code. Unlike it, the CutMix partner is an independent
draw on every process. Data sources: see `s5_hf.data.streams` (benchmark layouts, Parquet shard folders, Hub ids).
With `--gradient_accumulation_steps N` each step accumulates N micro-batches of `--batch_size` (+ as many unlabeled
ones); loss_x and loss_u each average over the valid pixels of the whole accumulated batch (`s5_hf.training.loop`).
Options: `s5_hf.training.arguments` (`S4P_ARGUMENTS`).

Your own data (`s5_hf.data.folders`, `s5_hf.data.shards.folder_to_shards`): --labeled may be a folder of image/mask
pairs or shards of any band count and dtype, --unlabeled a folder (read without its masks:
`LabeledFolder.load(images_only=True)`: images/ alone, or pairs whose masks are then not read) or shards.
Both must have the same band layout. Data other than 8-bit RGB is normalized with per-band statistics of the
labeled training split only (`s5_hf.data.normalization`; the unlabeled pool is the large one, often too large for
an extra pass, and the saved processor then matches the data MoE-MDF fine-tunes on), kept in the saved image
processor and used for evaluation; both streams stay in the data's units through the augmentation, and the strong
views get band-wise brightness/contrast + blur (`strong_augment_bands`) instead of the RGB colour jitter. Nodata
pixels (--nodata, the GeoTIFFs' own, a shard card's ``nodata``) are ignored by loss_x (masks) and loss_u (ignore
mask).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..configuration_s5 import S5Task
from ..data.images import parse_bands
from ..data.normalization import band_layout, data_normalization, model_num_channels, nodata_fill
from ..data.streams import DataSource, TrainStream, process_part, read_id2label
from ..evaluation.protocols import evaluate_sources
from ..label_sets import VOID_ID
from ..modeling_s5 import S5ForSemanticSegmentation
from .arguments import (
    S4P_ARGUMENTS, ModelArguments, S4PArguments, S4PDataArguments, S4PRunArguments, S5ArgumentParser, argument_record,
)
from .loop import (
    MicroBatch, check_task_classes, config_from_arguments, make_accelerator, prepare_training, push_to_hub,
    run_training, start_trackers,
)
from .losses import s4p_losses


@dataclass(frozen=True)
class S4PRun:
    """A parsed S4P run: the option groups as given and what they resolve to (data source, splits)."""

    model: ModelArguments
    data: S4PDataArguments
    semi: S4PArguments
    training: S4PRunArguments
    labeled_source: DataSource
    labeled_split: str
    validation_split: str
    test_split: str
    unlabeled_batch_size: int
    unlabeled_source: DataSource | None = None

    def record(self) -> dict:
        return argument_record(self.model, self.data, self.semi, self.training)


def parser() -> S5ArgumentParser:
    return S5ArgumentParser(S4P_ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv=None) -> S4PRun:
    """The run of a command line, or of a config file (first argument) with overriding flags."""
    model, data, semi, training = parser().parse(argv)
    training.check()
    labeled = DataSource.parse(data.labeled, "isaid")
    if data.labels:
        labeled = dataclasses.replace(labeled, id2label=read_id2label(data.labels))
    unlabeled = DataSource.parse(data.unlabeled, "rs4p")
    if (data.nodata is not None or data.bands is not None) and "folder" not in (labeled.kind, unlabeled.kind):
        raise ValueError(f"--nodata/--bands apply to folders of image/mask pairs; neither {data.labeled} "
                         f"({labeled.kind}) nor {data.unlabeled} ({unlabeled.kind}) is one.")
    labeled, unlabeled = (with_folder_options(source, data, training.seed) for source in (labeled, unlabeled))
    train, validation, test = labeled.default_splits()
    return S4PRun(
        model, data, semi, training, labeled,
        labeled_split=train if data.labeled_split is None else data.labeled_split,
        validation_split=validation if data.validation_split is None else data.validation_split,
        test_split=test if data.test_split is None else data.test_split,
        unlabeled_batch_size=data.unlabeled_batch_size or data.batch_size,
        unlabeled_source=unlabeled,
    )


def with_folder_options(source: DataSource, data: S4PDataArguments, seed: int) -> DataSource:
    """`source` with --nodata and --bands when it is a folder of pairs (refused for other kinds)."""
    options = {}
    if data.nodata is not None:
        try:
            options["nodata"] = float(data.nodata)
        except ValueError:
            raise ValueError(f"--nodata: {data.nodata!r} is not a number (e.g. 0 or nan).") from None
    if data.bands is not None:
        options["bands"] = parse_bands(data.bands)
    if source.kind != "folder":
        return source
    return dataclasses.replace(source, split_seed=seed, **options)


def unlabeled_rows(source: DataSource, split: str):
    """The unlabeled stream's rows: a folder's without masks (`LabeledFolder.load(images_only=True)`, with their
    exact ``valid`` nodata mask), other sources' as they are."""
    return source.folder().load(split, images_only=True) if source.kind == "folder" else source.load(split)


def build_model(run: S4PRun, task: str | dict | S5Task) -> S5ForSemanticSegmentation:
    """A new model with the one head `task` (a benchmark name, a dict or an `S5Task`), or the given one, whose head
    must be `task`."""
    task = S5Task.parse(task)
    model_arguments = run.model
    if model_arguments.model_name_or_path:
        if model_arguments.config_overrides:
            raise ValueError("--config_overrides builds a new model; it cannot be combined with --model_name_or_path.")
        model = S5ForSemanticSegmentation.from_pretrained(model_arguments.model_name_or_path)
        if model.config.task_names != [task.name]:
            raise ValueError(f"{model_arguments.model_name_or_path} has heads {model.config.task_names}; S4P trains "
                             f"one head, {task.name!r} (the name of the labeled data).")
        return model
    return S5ForSemanticSegmentation(config_from_arguments(model_arguments, [task]))


def valid_pixels(labels: torch.Tensor, ignore_index: int | None) -> int:
    """Pixels a cross-entropy term averages over: neither void (255, padding) nor the ignore index."""
    valid = labels != VOID_ID
    if ignore_index is not None:
        valid &= labels != ignore_index
    return int(valid.sum())


def main(argv=None) -> dict:
    run = parse_args(argv)
    data, training = run.data, run.training
    labeled, unlabeled = run.labeled_source, run.unlabeled_source
    # Data checks and band statistics come first: a bad dataset stops the run before its output folder exists.
    norm = data_normalization({labeled.name: labeled}, {labeled.name: run.labeled_split},
                              model_num_channels(run.model), tuple(data.clip_percentiles) or None)
    layouts = {data.labeled: band_layout(labeled), data.unlabeled: band_layout(unlabeled)}
    if len(set(layouts.values())) > 1:
        raise ValueError(f"The labeled and unlabeled data must have one band layout (bands, dtype): {layouts}.")
    processor = norm.processor
    session = make_accelerator(training, run.record())
    accelerator = session.accelerator
    torch.manual_seed(training.seed)  # the same initial weights on every process
    wanted = labeled.task()
    model = build_model(run, wanted)
    task = model.config.tasks[0]
    check_task_classes(model.config, labeled.name, wanted.num_labels, data.labeled)

    rank, world = accelerator.process_index, accelerator.num_processes
    crop = training.crop_size
    ratio_range = tuple(data.ratio_range)
    streams = {
        "labeled": TrainStream(process_part(labeled.load(run.labeled_split, **data.labeled_options), rank, world),
                               norm.labeled_transform(crop, ratio_range, labeled), data.batch_size,
                               seed=training.seed, shuffle_buffer=training.shuffle_buffer,
                               num_workers=training.num_workers, name=data.labeled),
        # Two independent draws of the unlabeled data: u and its CutMix partner u_mix.
        **{name: TrainStream(process_part(unlabeled_rows(unlabeled, data.unlabeled_split), rank, world),
                             norm.unlabeled_transform(crop, ratio_range, run.semi.cutmix_p, nodata_fill(unlabeled)),
                             run.unlabeled_batch_size, seed=training.seed + offset,
                             shuffle_buffer=training.shuffle_buffer, num_workers=training.num_workers,
                             name=data.unlabeled)
           for name, offset in (("unlabeled", 1), ("unlabeled_mix", 2))},
    }

    model, optimizer, scheduler = prepare_training(accelerator, model, training)
    device = accelerator.device

    def draw() -> MicroBatch:
        batches = [[t.to(device) for t in next(streams[name])] for name in ("labeled", "unlabeled", "unlabeled_mix")]
        # loss_x averages over the labeled batch's valid pixels, loss_u over the unlabeled batch's (ignore mask).
        return MicroBatch(batches, {"loss_x": valid_pixels(batches[0][1], task.ignore_index),
                                    "loss_u": valid_pixels(batches[1][3], None)})

    def compute_losses(batches, step: int, fractions):
        losses, scalars = s4p_losses(model, *batches, ignore_index=task.ignore_index, threshold=run.semi.conf_thresh)
        # Each term weighted by this micro-batch's share of its pixels (1 without accumulation).
        loss_x, loss_u = losses["loss_x"] * fractions["loss_x"], losses["loss_u"] * fractions["loss_u"]
        return {"loss": (loss_x + loss_u) / 2, "loss_x": loss_x, "loss_u": loss_u}, scalars

    validation = {task.name: labeled} if run.validation_split else {}
    tested = {task.name: labeled} if run.test_split and run.test_split != run.validation_split else {}

    def evaluate():
        return evaluate_sources(model, validation, run.validation_split, crop_size=crop, accelerator=accelerator,
                                max_samples=training.max_eval_samples, batch_size=training.eval_batch_size,
                                reader_options={task.name: data.labeled_options}, processor=processor)

    def test():
        return evaluate_sources(model, tested, run.test_split, crop_size=crop, accelerator=accelerator,
                                max_samples=training.max_eval_samples, batch_size=training.eval_batch_size,
                                reader_options={task.name: data.labeled_options}, processor=processor)

    def selection(results) -> float:
        return results[task.name].scores.mean_iou if results else 0.0

    start_trackers(session, "s4p", run.record())
    outcome = run_training(session, model, optimizer, scheduler, training, streams=streams, draw=draw,
                           compute_losses=compute_losses, evaluate=evaluate, selection=selection,
                           test=test if tested else None, image_processor=processor)
    if training.push_to_hub:
        outcome["commit_url"] = push_to_hub(accelerator, training, outcome, stage="s4p", run_summary=(
            f"This model was trained by `training/pretrain_s4p.py` for {training.max_train_steps} steps (labeled "
            f"{data.labeled}, unlabeled {data.unlabeled}); the results are its own evaluation (split and sample cap "
            "per result)."))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return outcome


__all__ = ["S4PRun", "build_model", "main", "parse_args", "parser", "unlabeled_rows", "valid_pixels",
           "with_folder_options"]
