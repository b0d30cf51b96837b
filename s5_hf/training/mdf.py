"""MoE-MDF: multi-dataset fine-tuning of S5 with per-dataset FFN experts and decoders (the paper's MoE-MDF).

    accelerate launch training/finetune_mdf.py --model_name_or_path runs/s4p-vit-b/model \
        --train_datasets vaihingen=/data/Vaihingen potsdam=/data/Potsdam \
                         openearthmap=/data/OpenEarthMap loveda=/data/LoveDA \
        --output_dir runs/mdf-vit-b
    accelerate launch training/finetune_mdf.py configs/mdf_vit_b.yaml      # the same run from a config file

From a single-task (S4P) model, every dataset gets an expert initialised from the tail rows of the pretrained FFN
output layer (so each starts at the pretrained function) and a copy of the pretrained decoder; classifiers start
fresh. Each step takes one batch of every dataset (`--gradient_accumulation_steps N`: N micro-batches of
`--batch_size`, each dataset's loss averaging over the valid pixels of the whole accumulated batch), runs them in
one forward (the model routes rows to their experts and decoders; `--no_mixed_batch` runs one forward per dataset
as the official code), and sums the per-dataset cross-entropies, each with its ignore index and weight. The
official run switches the Vaihingen loss on at 70 % of training (`--loss_start vaihingen=0.7`, the default).

Validation follows each dataset's official protocol (`s5_hf.evaluation`); the best model (mean mIoU over
Vaihingen, Potsdam and OpenEarthMap, as the official model selection) is kept in `<output_dir>/best`. Model
selection never sees a reported test split: for the ISPRS benchmarks (train and test only) it scores training
tiles held out of training (`heldout`, 1/8 of the tiles by name, `s5_hf.data.registry`), and the test split is
scored once, on the final model, and reported as test; OpenEarthMap and LoveDA select on and report their
validation split, as the paper. `--max_eval_samples` caps both and is recorded with every result.
Defaults are the official run's: crop 512, batch 12 per dataset and process, AdamW lr 5e-5, weight decay 0.05,
cosine schedule, no layer decay (configured but not applied by the official optimiser).

`--lora` trains PEFT LoRA adapters instead of experts (`s5_hf.training.lora`): the model has no experts
(`--part_features` is ignored), every dataset gets a LoRA adapter named after it on the encoder's linear layers
(`--lora_target_modules`, default attention q/k/v/o and FFN fc1/fc2; `--lora_r`, `--lora_alpha`,
`--lora_dropout`), the backbone's own weights stay frozen and only adapters, decoders and classifiers train. Each
step runs one forward per dataset with its adapter (a mixed batch cannot pick an adapter per row) and one
backward. `<output_dir>/model` (and `best`) hold the plain S5 model with its trained decoders plus `lora/<task>/`;
the final adapters are also written to `<output_dir>/lora/<task>/`, each loadable with
`PeftModel.from_pretrained(S5ForSemanticSegmentation.from_pretrained(<output_dir>/model), ..., adapter_name=task)`.

`--train_only_new` extends a trained multi-task model (`--model_name_or_path`) with the --train_datasets, which
must all be new: `S5ForSemanticSegmentation.add_task` gives each an expert and a decoder copied from the first
task and a fresh classifier, and only those train (everything else has requires_grad False; the old decoders
never run, so their BatchNorm statistics stay). The old tasks' outputs stay bit-identical.

Options: `s5_hf.training.arguments` (`MDF_ARGUMENTS`); default splits: each reader's declaration
(`DataSource.default_splits`, `s5_hf.data.registry.stage_splits`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import files
from ..configuration_s5 import S5Config
from ..data import normalization
from ..data.images import parse_bands
from ..data.normalization import model_num_channels
from ..data.streams import DataSource, TrainStream, process_part, read_id2label
from ..evaluation.protocols import evaluate_sources
from ..modeling_s5 import S5ForSemanticSegmentation
from .arguments import (
    MDF_ARGUMENTS, MDFArguments, MDFDataArguments, MDFRunArguments, ModelArguments, S5ArgumentParser, argument_record,
)
from .loop import (
    MicroBatch, check_task_classes, config_from_arguments, make_accelerator, prepare_training, push_to_hub,
    run_training, start_trackers,
)
from .losses import mdf_losses
from .s4p import valid_pixels

SELECTION_TASKS = ("vaihingen", "potsdam", "openearthmap")


def name_values(pairs: list[str] | None, cast, option: str) -> dict:
    """['a=1', 'b=2'] -> {'a': cast('1'), ...}; the error names the option and the bad item."""
    out = {}
    for item in pairs or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{option}: {item!r} must be NAME=VALUE.")
        out[name.strip().lower()] = cast(value.strip())
    return out


def per_dataset(items: list[str], names, cast, option: str) -> dict:
    """'VALUE' (every dataset) or 'NAME=VALUE' items -> {name: value}; the error names the option and the item."""
    out = {}
    for item in items or []:
        if "=" in item:
            out.update(name_values([item], cast, option))
        else:
            try:
                value = cast(item)
            except ValueError as error:
                raise ValueError(f"{option}: {item!r} is not a valid value ({error}).") from None
            out.update({name: value for name in names})
    return out


def _labels_file(path: str) -> dict[int, str]:
    try:
        return read_id2label(path)
    except ValueError as error:
        raise ValueError(f"--labels: {error}") from None


def with_dataset_options(sources: dict, data: MDFDataArguments, seed: int) -> dict:
    """The sources with their --labels, --ignore_index, --nodata, --validation_split and --bands."""
    names = list(sources)
    options = {
        "id2label": name_values(data.labels, _labels_file, "--labels"),
        "ignore_index": name_values(data.ignore_index, int, "--ignore_index"),
        "nodata": per_dataset(data.nodata, names, float, "--nodata"),
        "validation_split": per_dataset(data.validation_split, names, float, "--validation_split"),
        "bands": per_dataset(data.bands, names, parse_bands, "--bands"),
    }
    for option, values in options.items():
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"--{'labels' if option == 'id2label' else option} names {unknown}, which are not among "
                             f"--train_datasets {names}.")
    out = {}
    for name, source in sources.items():
        given = {option: values[name] for option, values in options.items() if name in values}
        if source.kind != "folder" and set(given) & {"nodata", "validation_split", "bands"}:
            raise ValueError(f"--nodata/--validation_split/--bands apply to folders of image/mask pairs, not to "
                             f"{name}={source.location} ({source.kind}).")
        out[name] = dataclasses.replace(source, split_seed=seed, **given)
    return out


@dataclass(frozen=True)
class MDFRun:
    """A parsed MoE-MDF run: the option groups as given and what they resolve to (data sources with their options,
    the splits of each dataset, loss weights and start fractions)."""

    model: ModelArguments
    data: MDFDataArguments
    mdf: MDFArguments
    training: MDFRunArguments
    sources: dict[str, DataSource]
    train_splits: dict[str, str]
    validation_splits: dict[str, str]
    test_splits: dict[str, str]
    loss_weights: dict[str, float]
    loss_start: dict[str, float]

    def record(self) -> dict:
        return argument_record(self.model, self.data, self.mdf, self.training)


def parser() -> S5ArgumentParser:
    return S5ArgumentParser(MDF_ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv=None) -> MDFRun:
    """The run of a command line, or of a config file (first argument) with overriding flags."""
    model, data, mdf, training = parser().parse(argv)
    training.check()
    sources = {s.name: s for s in (DataSource.parse(t) for t in data.train_datasets)}
    if len(sources) != len(data.train_datasets):
        raise ValueError(f"--train_datasets names a dataset twice: {data.train_datasets}.")
    sources = with_dataset_options(sources, data, training.seed)
    # Default splits: what each reader declares (`DataSource.default_splits`).
    defaults = {name: source.default_splits() for name, source in sources.items()}
    train_splits = {n: d[0] for n, d in defaults.items()} | name_values(data.train_splits, str, "--train_splits")
    validation_splits = ({n: d[1] for n, d in defaults.items()}
                         | name_values(data.validation_splits, str, "--validation_splits"))
    test_splits = {n: d[2] for n, d in defaults.items()} | name_values(data.test_splits, str, "--test_splits")
    loss_weights = {name: 1.0 for name in sources} | name_values(mdf.loss_weights, float, "--loss_weights")
    # The official default applies where Vaihingen is trained; an explicit --loss_start replaces it.
    default_start = {"vaihingen": 0.7} if "vaihingen" in sources else {}
    loss_start = default_start if mdf.loss_start is None else name_values(mdf.loss_start, float, "--loss_start")
    for name in sources:
        if validation_splits.get(name) == "test":
            logging.getLogger(__name__).warning(
                "%s: the test split selects the best model; its scores are then not an unbiased test result "
                "(pass --validation_splits %s=SPLIT with a split held out of training).", name, name)
    for option, values in (("train_splits", train_splits), ("validation_splits", validation_splits),
                           ("test_splits", test_splits), ("loss_weights", loss_weights), ("loss_start", loss_start),
                           ("reader_options", data.reader_options)):
        unknown = sorted(set(values) - set(sources))
        if unknown:
            raise ValueError(f"--{option} names {unknown}, which are not among --train_datasets {list(sources)}.")
    if mdf.train_only_new and (mdf.lora or not model.model_name_or_path):
        raise ValueError("--train_only_new extends a trained multi-task model: it needs --model_name_or_path and "
                         "cannot be combined with --lora.")
    if mdf.lora and training.activation_checkpointing is None and not training.gradient_checkpointing:
        training = dataclasses.replace(training, activation_checkpointing="none")  # the default where it can apply
    if mdf.lora and training.checkpointing_mode() != "none":
        raise ValueError("--gradient_checkpointing / --activation_checkpointing cannot be combined with --lora: the "
                         "backward would recompute every dataset's forward with the adapter of the last one.")
    return MDFRun(model, data, mdf, training, sources, train_splits, validation_splits, test_splits, loss_weights,
                  loss_start)


def build_model(run: MDFRun, *, lora: bool | None = None) -> S5ForSemanticSegmentation:
    """The model the run trains (with `--lora`, `build_lora_model`'s); `lora=False` builds the model without
    adapters whatever the options say."""
    if run.mdf.lora if lora is None else lora:
        return build_lora_model(run)
    # A LoRA run's model has no experts: the adapters take their place.
    part_features = 0 if run.mdf.lora else run.mdf.part_features
    tasks = [source.task() for source in run.sources.values()]
    names = list(run.sources)
    path = run.model.model_name_or_path
    if not path:
        return S5ForSemanticSegmentation(config_from_arguments(run.model, tasks, part_features=part_features))
    if run.model.config_overrides:
        raise ValueError("--config_overrides builds a new model; it cannot be combined with --model_name_or_path.")
    start = S5ForSemanticSegmentation.from_pretrained(path)
    if run.mdf.train_only_new:
        return only_new_tasks(start, run)
    if start.config.task_names == names:  # an MDF model already: continue fine-tuning it
        return start
    if len(start.config.tasks) != 1:
        raise ValueError(f"{path} has heads {start.config.task_names}: start from a single-task "
                         f"(S4P) model, or from a multi-task model with exactly the heads {names}.")
    fields = {k: v for k, v in start.config.to_dict().items() if k in S5Config.__dataclass_fields__}
    config = S5Config(**{**fields, "tasks": tasks, "part_features": part_features, "default_task": None,
                         "out_indices": start.config.out_indices})
    return S5ForSemanticSegmentation.from_single_task(start, config, copy_decoder=True)


def only_new_tasks(model: S5ForSemanticSegmentation, run: MDFRun) -> S5ForSemanticSegmentation:
    """`--train_only_new`: every dataset becomes a new task (`add_task`: expert and decoder copied from the first
    task, fresh classifier) and only the new tasks' parameters train. The old decoders' BatchNorm statistics cannot
    move either: only the new datasets are trained, so an old decoder never runs in training mode."""
    old = model.config.task_names
    again = [name for name in run.sources if name in old]
    if again:
        raise ValueError(f"--train_only_new: {again} are already tasks of {run.model.model_name_or_path} ({old}); list "
                         f"only new datasets in --train_datasets (training an old task would change its outputs).")
    for source in run.sources.values():
        model.add_task(source.task())
    new = {model.config.task_index(name) for name in run.sources}
    heads = tuple(f"{part}.{index}." for index in new for part in ("decoders", "classifiers"))
    experts = tuple(f".mlp.experts.{index}." for index in new)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(heads) or any(expert in name for expert in experts))
    return model


def build_lora_model(run: MDFRun):
    """The model without experts (`build_model` of a LoRA run) with one LoRA adapter per dataset."""
    from .lora import DEFAULT_TARGET_MODULES, add_lora_adapters

    model = build_model(run, lora=False)
    return add_lora_adapters(model, run.mdf.lora_target_modules or DEFAULT_TARGET_MODULES, r=run.mdf.lora_r,
                             alpha=run.mdf.lora_alpha, dropout=run.mdf.lora_dropout)


def main(argv=None) -> dict:
    run = parse_args(argv)
    data, training = run.data, run.training
    # Data checks and band statistics come first: a bad dataset stops the run before its output folder exists.
    norm = normalization.data_normalization(run.sources, run.train_splits, model_num_channels(run.model),
                                            tuple(data.clip_percentiles) or None)
    processor = norm.processor
    session = make_accelerator(training, run.record())
    accelerator = session.accelerator
    torch.manual_seed(training.seed)
    model = build_model(run)
    config = model.config
    for name, source in run.sources.items():
        check_task_classes(config, name, source.task().num_labels, f"{name}={source.location}")

    crop = training.crop_size

    def transform(name: str, source: DataSource):
        return norm.labeled_transform(crop, data.ratio_range, source, name)

    rank, world = accelerator.process_index, accelerator.num_processes
    streams = {
        name: TrainStream(
            process_part(source.load(run.train_splits[name], **data.reader_options.get(name, {})), rank, world),
            transform(name, source), data.batch_size, seed=training.seed + index,
            shuffle_buffer=training.shuffle_buffer, num_workers=training.num_workers,
            name=f"{name}={source.location}")
        for index, (name, source) in enumerate(run.sources.items())
    }
    ignore = {t.name: t.ignore_index for t in config.tasks}

    model, optimizer, scheduler = prepare_training(accelerator, model, training)
    device = accelerator.device

    def weight(name: str, step: int) -> float:
        start = run.loss_start.get(name, 0.0) * training.max_train_steps
        return run.loss_weights[name] if step >= start else 0.0

    def draw() -> MicroBatch:
        batches = {name: [t.to(device) for t in next(stream)] for name, stream in streams.items()}
        # Each dataset's loss averages over its valid pixels.
        return MicroBatch(batches, {name: valid_pixels(labels, ignore[name]) for name, (_, labels) in batches.items()})

    def compute_losses(batches, step: int, fractions):
        weights = {name: weight(name, step) for name in batches}
        # With --lora each dataset runs its own forward, with its adapter.
        losses, scalars = mdf_losses(model, batches, ignore, weights,
                                     mixed_batch=run.mdf.mixed_batch and not run.mdf.lora)
        # Each dataset's loss weighted by this micro-batch's share of its pixels (1 without accumulation).
        per_task = {name: losses[f"loss_{name}"] * fractions[name] for name in batches}
        total = sum(weights[name] * value for name, value in per_task.items())
        return {"loss": total, **{f"loss_{name}": value for name, value in per_task.items()}}, scalars

    validation = {name: source for name, source in run.sources.items() if run.validation_splits[name]}
    # Scored at the end where the reported split is not the model-selection one (ISPRS test).
    test_sources = {name: source for name, source in run.sources.items()
                    if run.test_splits[name] and run.test_splits[name] != run.validation_splits[name]}

    def evaluate():
        return evaluate_sources(model, validation, run.validation_splits, crop_size=crop, accelerator=accelerator,
                                max_samples=training.max_eval_samples, reader_options=data.reader_options,
                                batch_size=training.eval_batch_size, processor=processor)

    def test():
        return evaluate_sources(model, test_sources, run.test_splits, crop_size=crop, accelerator=accelerator,
                                max_samples=training.max_eval_samples, reader_options=data.reader_options,
                                batch_size=training.eval_batch_size, processor=processor)

    def selection(results) -> float:
        chosen = [r for name, r in results.items() if name in SELECTION_TASKS] or list(results.values())
        return sum(r.scores.mean_iou for r in chosen) / len(chosen) if chosen else 0.0

    start_trackers(session, "mdf", run.record())
    outcome = run_training(session, model, optimizer, scheduler, training, streams=streams, draw=draw,
                           compute_losses=compute_losses, evaluate=evaluate, selection=selection,
                           test=test if test_sources else None, image_processor=processor)
    if run.mdf.lora:
        if accelerator.is_main_process:
            session.run_folder.claim("lora")
            with files.staged_directory(Path(training.output_dir) / "lora") as staging:
                accelerator.unwrap_model(model).save_adapters(staging)
            session.run_folder.claim()
        accelerator.wait_for_everyone()
    if training.push_to_hub:
        outcome["commit_url"] = push_to_hub(accelerator, training, outcome, stage="mdf", run_summary=(
            f"This model was trained by `training/finetune_mdf.py` for {training.max_train_steps} steps on "
            f"{', '.join(run.sources)}; the results are its own evaluation (split and sample cap per result)."))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return outcome


__all__ = ["MDFRun", "SELECTION_TASKS", "build_lora_model", "build_model", "main", "name_values", "only_new_tasks",
           "parse_args", "parser", "per_dataset", "with_dataset_options"]
