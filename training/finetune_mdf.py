"""MoE-MDF: multi-dataset fine-tuning of S5 with per-dataset FFN experts and decoders (the paper's MoE-MDF).

    accelerate launch training/finetune_mdf.py --model_name_or_path runs/s4p-vit-b/model \
        --train_datasets vaihingen=/data/Vaihingen potsdam=/data/Potsdam \
                         openearthmap=/data/OpenEarthMap loveda=/data/LoveDA \
        --output_dir runs/mdf-vit-b

From a single-task (S4P) model, every dataset gets an expert initialised from the tail rows of the pretrained FFN
output layer (so each starts at the pretrained function) and a copy of the pretrained decoder; classifiers start
fresh. Each step takes one batch of every dataset, runs them in one forward (the model routes rows to their
experts and decoders; `--no-mixed_batch` runs one forward per dataset as the official code), and sums the
per-dataset cross-entropies, each with its ignore index and weight. The official run switches the Vaihingen loss
on at 70 % of training (`--loss_start vaihingen=0.7`, the default).

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from s5_hf import S5Config, S5ForSemanticSegmentation, files
from s5_hf.image_processing_s5 import S5_IMAGE_MEAN, S5_IMAGE_STD
from s5_hf.training.augment import LabeledTransform
from s5_hf.data.band_stats import RawUnitsTransform, compute_band_stats, processor_from_band_stats
from s5_hf.data.folders import CheckedMasks
from s5_hf.data.streams import DataSource, TrainStream, process_part, read_id2label
from s5_hf.evaluation.protocols import evaluate_sources
from s5_hf.label_sets import LABEL_SETS
from s5_hf.training.losses import mdf_losses
from s5_hf.training.loop import (
    add_common_arguments, add_model_arguments, check_task_classes, config_from_arguments, make_accelerator,
    prepare_training, push_to_hub, run_training,
)

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


def with_dataset_options(sources: dict, args: argparse.Namespace) -> dict:
    """The sources with their --labels, --ignore_index, --nodata and --validation_split."""
    names = list(sources)
    options = {
        "id2label": name_values(args.labels, _labels_file, "--labels"),
        "ignore_index": name_values(args.ignore_index, int, "--ignore_index"),
        "nodata": per_dataset(args.nodata, names, float, "--nodata"),
        "validation_split": per_dataset(args.validation_split, names, float, "--validation_split"),
    }
    for option, values in options.items():
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"--{'labels' if option == 'id2label' else option} names {unknown}, which are not among "
                             f"--train_datasets {names}.")
    out = {}
    for name, source in sources.items():
        given = {option: values[name] for option, values in options.items() if name in values}
        if source.kind != "folder" and set(given) & {"nodata", "validation_split"}:
            raise ValueError(f"--nodata/--validation_split apply to folders of image/mask pairs, not to "
                             f"{name}={source.location} ({source.kind}).")
        out[name] = dataclasses.replace(source, split_seed=args.seed, **given)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train_datasets", nargs="+", required=True,
                      help="NAME=LOCATION per dataset, in expert order (see s5_hf.data.streams).")
    data.add_argument("--train_splits", nargs="*", default=[],
                      help="NAME=SPLIT overrides (default: train; ISPRS: train_minus_heldout).")
    data.add_argument("--validation_splits", nargs="*", default=[],
                      help="NAME=SPLIT overrides of the model-selection split; NAME= skips its validation (default: "
                           "ISPRS heldout = training tiles held out of training, others val).")
    data.add_argument("--test_splits", nargs="*", default=[],
                      help="NAME=SPLIT overrides of the split scored at the end and reported; NAME= skips it "
                           "(default: the benchmark's evaluation split, ISPRS test, others val).")
    data.add_argument("--reader_options", type=json.loads, default={},
                      help='JSON {NAME: options} for benchmark readers, e.g. \'{"potsdam": {"patch_size": 512}}\': '
                           "patch_size/stride (ISPRS cut 512 px patches by default: smaller tiles become mostly "
                           "padding), heldout_fraction (0.125), see s5_hf.data.load_benchmark.")
    data.add_argument("--labels", nargs="*", default=[],
                      help="NAME=id2label.json: the classes of a dataset that is not a benchmark (JSON object "
                           '{"0": "background", ...}); default: the folder\'s id2label.json or the shard card\'s id2label.')
    data.add_argument("--ignore_index", nargs="*", default=[],
                      help="NAME=ID: the mask value a dataset's loss and metrics ignore (default 255).")
    data.add_argument("--nodata", nargs="*", default=[],
                      help="VALUE or NAME=VALUE (e.g. 0, nan): image nodata of folder datasets, overriding the "
                           "GeoTIFF's own; such pixels are ignored by the loss and the metrics.")
    data.add_argument("--validation_split", nargs="*", default=[],
                      help="FRACTION or NAME=FRACTION: part of a folder dataset without val/ held out (fixed seed, "
                           "--seed) for model selection.")
    data.add_argument("--batch_size", type=int, default=12, help="Images per dataset, process and step.")
    data.add_argument("--ratio_range", type=float, nargs=2, default=(0.5, 2.0))
    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss_weights", nargs="*", default=[], help="NAME=WEIGHT (default 1 each).")
    loss.add_argument("--loss_start", nargs="*", default=None,
                      help="NAME=FRACTION: the dataset's loss counts from that fraction of training on (official: "
                           "Vaihingen from epoch 70 of 100). Pass --loss_start with no value to train all from step 0.")
    loss.add_argument("--mixed_batch", action=argparse.BooleanOptionalAction, default=True,
                      help="One forward for all datasets (default) or one per dataset.")
    model = parser.add_argument_group("experts")
    model.add_argument("--part_features", type=int, default=256, help="Channels of each expert (0: no experts).")
    model.add_argument("--train_only_new", action="store_true",
                       help="Add every --train_datasets dataset as a new task of the multi-task model "
                            "--model_name_or_path (S5ForSemanticSegmentation.add_task) and train only the new "
                            "tasks' experts, decoders and classifiers: the old tasks' outputs stay bit-identical.")
    lora = parser.add_argument_group("LoRA (instead of experts)")
    lora.add_argument("--lora", action="store_true",
                      help="Train one LoRA adapter per dataset on the frozen backbone instead of experts.")
    lora.add_argument("--lora_r", type=int, default=16, help="LoRA rank.")
    lora.add_argument("--lora_alpha", type=float, default=32, help="LoRA scaling numerator (scale = alpha / r).")
    lora.add_argument("--lora_dropout", type=float, default=0.0)
    lora.add_argument("--lora_target_modules", nargs="+", default=None,
                      help="Names (or dotted suffixes) of the encoder's linear layers to adapt "
                           "(default: q_proj k_proj v_proj o_proj fc1 fc2).")
    add_model_arguments(parser)
    add_common_arguments(parser, learning_rate=5e-5, weight_decay=0.05, eval_steps=1000, max_train_steps=105_800)
    args = parser.parse_args(argv)
    args.sources = {s.name: s for s in (DataSource.parse(t) for t in args.train_datasets)}
    if len(args.sources) != len(args.train_datasets):
        raise ValueError(f"--train_datasets names a dataset twice: {args.train_datasets}.")
    args.sources = with_dataset_options(args.sources, args)
    defaults = {name: source.default_splits() for name, source in args.sources.items()}
    args.train_splits = {n: d[0] for n, d in defaults.items()} | name_values(args.train_splits, str, "--train_splits")
    args.validation_splits = ({n: d[1] for n, d in defaults.items()}
                              | name_values(args.validation_splits, str, "--validation_splits"))
    args.test_splits = {n: d[2] for n, d in defaults.items()} | name_values(args.test_splits, str, "--test_splits")
    args.loss_weights = {name: 1.0 for name in args.sources} | name_values(args.loss_weights, float, "--loss_weights")
    # The official default applies where Vaihingen is trained; an explicit --loss_start replaces it.
    default_start = {"vaihingen": 0.7} if "vaihingen" in args.sources else {}
    args.loss_start = default_start if args.loss_start is None else name_values(args.loss_start, float, "--loss_start")
    for name in args.sources:
        if args.validation_splits.get(name) == "test":
            logging.getLogger(__name__).warning(
                "%s: the test split selects the best model; its scores are then not an unbiased test result "
                "(pass --validation_splits %s=SPLIT with a split held out of training).", name, name)
    for option in ("train_splits", "validation_splits", "test_splits", "loss_weights", "loss_start", "reader_options"):
        unknown = sorted(set(getattr(args, option)) - set(args.sources))
        if unknown:
            raise ValueError(f"--{option} names {unknown}, which are not among --train_datasets {list(args.sources)}.")
    if args.train_only_new and (args.lora or not args.model_name_or_path):
        raise ValueError("--train_only_new extends a trained multi-task model: it needs --model_name_or_path and "
                         "cannot be combined with --lora.")
    if args.lora and args.gradient_checkpointing:
        raise ValueError("--gradient_checkpointing cannot be combined with --lora: the backward would recompute "
                         "every dataset's forward with the adapter of the last one.")
    return args


def model_bands(args: argparse.Namespace) -> int:
    """The band count (num_channels) of the model the run will train, read before any weights are loaded."""
    if args.model_name_or_path:
        return S5Config.from_pretrained(args.model_name_or_path).num_channels
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    return int(overrides.get("num_channels", 3)) if isinstance(overrides, dict) else 3


def data_normalization(args: argparse.Namespace, num_channels: int):
    """(processor to save with the model or None for the default 8-bit RGB one, mean, std, raw_units).

    Benchmarks and 8-bit RGB folders use the ImageNet statistics on [0, 1]. Folders of other bands or dtypes get
    per-band statistics from one streaming pass over their training splits (nodata left out), which the saved
    processor keeps for inference; all such sources must share one band layout, matching the model's
    `num_channels`."""
    layouts = {}
    for name, source in args.sources.items():
        if source.kind == "folder":
            info = source.folder().check()
            layouts[name] = (info.bands, info.dtype)
        else:
            layouts[name] = (3, "uint8")
    if all(layout == (3, "uint8") for layout in layouts.values()):
        if num_channels != 3:
            raise ValueError(f"The data is 8-bit RGB but the model takes {num_channels} bands (num_channels).")
        return None, S5_IMAGE_MEAN, S5_IMAGE_STD, False
    if len(set(layouts.values())) > 1:
        raise ValueError(f"One model normalises one band layout; the datasets differ (bands, dtype): {layouts}.")
    bands, dtype = next(iter(layouts.values()))
    if num_channels != bands:
        raise ValueError(f"The data has {bands} bands but the model takes {num_channels} (num_channels): "
                         "build the model with num_channels set to the data's band count.")
    stats = compute_band_stats(
        item for name, source in args.sources.items() for item in source.folder().iter_images(args.train_splits[name]))
    logging.getLogger(__name__).info("Band statistics over %d images (%s): mean %s, std %s", stats.images,
                                     stats.dtype, stats.mean, stats.std)
    processor = processor_from_band_stats(stats)
    return processor, stats.mean, stats.std, True


def build_model(args: argparse.Namespace) -> S5ForSemanticSegmentation:
    if getattr(args, "lora", False):
        return build_lora_model(args)
    tasks = [source.task() for source in args.sources.values()]
    names = list(args.sources)
    if not args.model_name_or_path:
        return S5ForSemanticSegmentation(config_from_arguments(args, tasks, part_features=args.part_features))
    if args.config_overrides:
        raise ValueError("--config_overrides builds a new model; it cannot be combined with --model_name_or_path.")
    start = S5ForSemanticSegmentation.from_pretrained(args.model_name_or_path)
    if getattr(args, "train_only_new", False):
        return only_new_tasks(start, args)
    if start.config.task_names == names:  # an MDF model already: continue fine-tuning it
        return start
    if len(start.config.tasks) != 1:
        raise ValueError(f"{args.model_name_or_path} has heads {start.config.task_names}: start from a single-task "
                         f"(S4P) model, or from a multi-task model with exactly the heads {names}.")
    fields = {k: v for k, v in start.config.to_dict().items() if k in S5Config.__dataclass_fields__}
    config = S5Config(**{**fields, "tasks": tasks, "part_features": args.part_features, "default_task": None,
                         "out_indices": start.config.out_indices})
    return S5ForSemanticSegmentation.from_single_task(start, config, copy_decoder=True)


def only_new_tasks(model: S5ForSemanticSegmentation, args: argparse.Namespace) -> S5ForSemanticSegmentation:
    """`--train_only_new`: every dataset becomes a new task (`add_task`: expert and decoder copied from the first
    task, fresh classifier) and only the new tasks' parameters train. The old decoders' BatchNorm statistics cannot
    move either: only the new datasets are trained, so an old decoder never runs in training mode."""
    old = model.config.task_names
    again = [name for name in args.sources if name in old]
    if again:
        raise ValueError(f"--train_only_new: {again} are already tasks of {args.model_name_or_path} ({old}); list "
                         f"only new datasets in --train_datasets (training an old task would change its outputs).")
    for source in args.sources.values():
        model.add_task(source.task())
    new = {model.config.task_index(name) for name in args.sources}
    heads = tuple(f"{part}.{index}." for index in new for part in ("decoders", "classifiers"))
    experts = tuple(f".mlp.experts.{index}." for index in new)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(heads) or any(expert in name for expert in experts))
    return model


def build_lora_model(args: argparse.Namespace):
    """The model without experts (as `build_model` with part_features=0) with one LoRA adapter per dataset."""
    from s5_hf.training.lora import DEFAULT_TARGET_MODULES, add_lora_adapters

    model = build_model(argparse.Namespace(**{**vars(args), "lora": False, "part_features": 0}))
    return add_lora_adapters(model, args.lora_target_modules or DEFAULT_TARGET_MODULES, r=args.lora_r,
                             alpha=args.lora_alpha, dropout=args.lora_dropout)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # Data checks and band statistics come first: a bad dataset stops the run before its output folder exists.
    processor, mean, std, raw_units = data_normalization(args, model_bands(args))
    args.image_processor = processor  # saved with the model (train_loop.run_training)
    scored = sorted(n for n in args.sources if args.validation_splits[n] or args.test_splits[n])
    if raw_units and scored:
        # s5_hf.evaluation reads 8-bit RGB only; fail now rather than after training.
        raise ValueError(f"Evaluating data other than 8-bit RGB is not supported yet; skip it for {scored} with "
                         f"--validation_splits {' '.join(n + '=' for n in scored)} --test_splits "
                         f"{' '.join(n + '=' for n in scored)}.")
    accelerator = make_accelerator(args)
    torch.manual_seed(args.seed)
    model = build_model(args)
    config = model.config
    for name, source in args.sources.items():
        task = source.task()
        classes = LABEL_SETS[name].num_classes if isinstance(task, str) else len(task["id2label"])
        check_task_classes(config, name, classes, f"{name}={source.location}")


    def transform(name: str, source: DataSource):
        labeled = LabeledTransform(crop, tuple(args.ratio_range), mean=mean, std=std)
        labeled = RawUnitsTransform(labeled) if raw_units else labeled
        task = source.task()
        if isinstance(task, dict) and source.kind in ("shards", "hub"):  # folders check their masks when read
            labeled = CheckedMasks(labeled, len(task["id2label"]), task["ignore_index"], f"{name}={source.location}")
        return labeled

    rank, world = accelerator.process_index, accelerator.num_processes
    crop = args.crop_size
    streams = {
        name: TrainStream(
            process_part(source.load(args.train_splits[name], **args.reader_options.get(name, {})), rank, world),
            transform(name, source), args.batch_size, seed=args.seed + index,
            shuffle_buffer=args.shuffle_buffer, num_workers=args.num_workers, name=f"{name}={source.location}")
        for index, (name, source) in enumerate(args.sources.items())
    }
    ignore = {t["name"]: t["ignore_index"] for t in config.tasks}

    model, optimizer, scheduler = prepare_training(accelerator, model, args)
    device = accelerator.device

    def weight(name: str, step: int) -> float:
        start = args.loss_start.get(name, 0.0) * args.max_train_steps
        return args.loss_weights[name] if step >= start else 0.0

    def compute_losses(step: int):
        batches = {name: [t.to(device) for t in next(stream)] for name, stream in streams.items()}
        weights = {name: weight(name, step) for name in batches}
        # With --lora each dataset runs its own forward, with its adapter.
        return mdf_losses(model, batches, ignore, weights, mixed_batch=args.mixed_batch and not args.lora)

    validation = {name: source for name, source in args.sources.items() if args.validation_splits[name]}
    # Scored at the end where the reported split is not the model-selection one (ISPRS test).
    test_sources = {name: source for name, source in args.sources.items()
                    if args.test_splits[name] and args.test_splits[name] != args.validation_splits[name]}

    def evaluate():
        return evaluate_sources(model, validation, args.validation_splits, crop_size=crop, accelerator=accelerator,
                                max_samples=args.max_eval_samples, reader_options=args.reader_options,
                                batch_size=args.eval_batch_size)

    def test():
        return evaluate_sources(model, test_sources, args.test_splits, crop_size=crop, accelerator=accelerator,
                                max_samples=args.max_eval_samples, reader_options=args.reader_options,
                                batch_size=args.eval_batch_size)

    def selection(results) -> float:
        chosen = [r for name, r in results.items() if name in SELECTION_TASKS] or list(results.values())
        return sum(r.scores.mean_iou for r in chosen) / len(chosen) if chosen else 0.0

    outcome = run_training(accelerator, model, optimizer, scheduler, args, streams=streams,
                           compute_losses=compute_losses, evaluate=evaluate, selection=selection,
                           test=test if test_sources else None)
    if args.lora:
        if accelerator.is_main_process:
            args.run_folder.claim("lora")
            with files.staged_directory(Path(args.output_dir) / "lora") as staging:
                accelerator.unwrap_model(model).save_adapters(staging)
            args.run_folder.claim()
        accelerator.wait_for_everyone()
    if args.push_to_hub:
        outcome["commit_url"] = push_to_hub(accelerator, args, outcome, stage="mdf", run_summary=(
            f"This model was trained by `training/finetune_mdf.py` for {args.max_train_steps} steps on "
            f"{', '.join(args.sources)}; the results are its own evaluation (split and sample cap per result)."))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return outcome


if __name__ == "__main__":
    main(sys.argv[1:])
