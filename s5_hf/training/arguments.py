"""Typed arguments of the training programs, parsed with `transformers.HfArgumentParser` (the convention of the
transformers examples): one dataclass per group of options, shared where the programs share them.

    ModelArguments          the model to start from or build (all programs)
    RunArguments            output folder, optimizer and schedule, checkpoints, logging, Hub (S4P and MoE-MDF; each
                            program's subclass carries its official defaults: `S4PRunArguments`, `MDFRunArguments`)
    DataArguments           batch size and rescale range (S4P and MoE-MDF; `S4PDataArguments`, `MDFDataArguments`)
    S4PArguments            semi-supervision (confidence threshold, CutMix)
    MDFArguments            losses, experts, LoRA
    DetectionArguments      the oriented-detection run

A run is a command line or a file: `python training/finetune_mdf.py configs/mdf_vit_b.yaml` reads a YAML (or JSON)
file whose keys are the option names (unknown keys are refused); flags after the file override its values. Files
and flags go through the same `argparse` actions, so a value means the same in both (a JSON string of options, or
a mapping in YAML). The dataclasses are plain values: the programs resolve them (data sources, default splits)
into their own run records and never change them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser

from ..configuration_s5_detection import DIOR_R_CLASSES, DOTA_V2_CLASSES

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
TRACKERS = ("tensorboard", "trackio", "wandb")


def _option(help: str, **argparse_kwargs: Any) -> dict:
    """Field metadata: the help text, plus argparse settings HfArgumentParser does not derive from the type
    (`nargs` other than "+", a `type` that parses JSON); `S5ArgumentParser` applies them."""
    return {"help": help, **({"s5": argparse_kwargs} if argparse_kwargs else {})}


def json_object(value: Any, option: str) -> dict:
    """A mapping given as a mapping (YAML/JSON files) or as a JSON string (command line)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"--{option} is not valid JSON ({error}): {value!r}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{option} must be a JSON object (a mapping), got {value!r}.")
    return dict(value)


# ---- shared -------------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: str | None = field(default=None, metadata=_option(
        "An S5 folder or Hub id to start from (S4P: e.g. a converted checkpoint; MDF: the S4P model)."))
    preset: str = field(default="vit-b", metadata=_option(
        "Backbone preset when no model is given: vit-b, vit-l, vit-h."))
    config_overrides: dict | str | None = field(default=None, metadata=_option(
        'JSON of config fields, e.g. \'{"hidden_size": 64, "num_hidden_layers": 2}\' (tiny runs); a mapping in a '
        "config file."))

    def overrides(self) -> dict:
        return json_object(self.config_overrides, "config_overrides")


@dataclass(kw_only=True)
class RunArguments:
    """Options of a training run common to S4P and MoE-MDF (defaults of the subclasses are the official runs')."""

    _argument_group_name = "training"

    output_dir: str = field(metadata=_option(
        "Checkpoints, logs and the final model go here: an empty or new folder, or this run's own with "
        "--resume_from_checkpoint / --overwrite_output_dir."))
    overwrite_output_dir: bool = field(default=False, metadata=_option(
        "Delete what an earlier run wrote into --output_dir (only that) and start afresh."))
    seed: int = 42
    max_train_steps: int = field(default=1000, metadata=_option("Optimizer steps."))
    gradient_accumulation_steps: int = field(default=1, metadata=_option(
        "Micro-batches of --batch_size per optimizer step (accelerate's `accumulate`): the update of N "
        "accumulated micro-batches is that of one N times larger batch (see s5_hf.training.loop)."))
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler_type: str = field(default="cosine", metadata=_option("Any transformers scheduler name."))
    num_warmup_steps: int = 0
    layer_decay: float | None = field(default=None, metadata=_option(
        "Layer-wise lr decay (e.g. 0.9); off by default, as in the effective official recipe."))
    max_grad_norm: float | None = field(default=None, metadata=_option("Gradient clipping (off by default)."))
    crop_size: int = 512
    num_workers: int = field(default=0, metadata=_option("DataLoader workers per stream."))
    shuffle_buffer: int = 1000
    eval_steps: int = field(default=1000, metadata=_option("Validate every N steps (0: only at the end)."))
    eval_batch_size: int = field(default=1, metadata=_option(
        "Sliding windows per forward in evaluation. Batching helps GPUs; on CPU a 512 px ViT-B window is already a "
        "full GEMM load (batch 4 measured 0.97x the speed of batch 1)."))
    max_eval_samples: int | None = field(default=None, metadata=_option(
        "Cap the validation and test images per dataset and process (recorded with the results)."))
    checkpointing_steps: int | None = field(default=None, metadata=_option(
        "Save a resumable checkpoint every N steps (default: every --eval_steps)."))
    checkpoints_total_limit: int = field(default=2, metadata=_option("Keep the N newest checkpoints."))
    resume_from_checkpoint: str | None = field(default=None, metadata=_option(
        "A checkpoint folder, or 'latest' for the newest one in --output_dir. Resuming unpickles accelerate's "
        "state files: use only checkpoints you trust."))
    max_void_steps: int = field(default=50, metadata=_option(
        "Stop when a batch of some data stream has had no valid (labelled, non-padding) pixel for this many steps "
        "in a row (0: never). Small tiles cut into large patches are mostly padding: set the readers' patch_size "
        "(e.g. --reader_options) to the tile or crop size."))
    logging_steps: int = 10
    report_to: Literal["none", "all", "tensorboard", "trackio", "wandb"] = field(default="none", metadata=_option(
        "Experiment tracker (accelerate's): tensorboard, trackio, wandb, all (every installed one) or none. "
        "metrics.jsonl is written in every case."))
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(default=None, metadata=_option(
        "AMP (default: accelerate's configuration; the official runs use fp16 on GPUs)."))
    gradient_checkpointing: bool = field(default=False, metadata=_option(
        "Recompute every backbone block in the backward pass (transformers' name; the same as "
        "--activation_checkpointing block)."))
    activation_checkpointing: str | None = field(default=None, metadata=_option(
        "What the backbone recomputes in the backward pass instead of keeping it: none, elementwise, attention, mlp "
        "or block, optionally ':k' for every k-th block (e.g. block:2). Same loss and gradients, less memory, more "
        "time: see benchmarks/TRAINING_MEMORY.md. Default: block, as the official runs (none with --lora)."))
    torch_compile: bool = field(default=False, metadata=_option(
        "Compile the model (forward, and the backward through AOTAutograd) with torch.compile, in place: saved "
        "folders and checkpoints are unchanged. Compilation takes minutes first, and again for each new task pattern "
        "of a batch; on a 2-core CPU the ViT-B step ran at x0.95 of eager (GEMM-bound, benchmarks/bench_compile.py), "
        "so it is meant for GPUs."))
    torch_compile_backend: str = field(default="inductor", metadata=_option(
        "torch.compile backend of --torch_compile (aot_eager: the same capture without code generation)."))
    sync_bn: bool = field(default=True, metadata=_option(
        "SyncBatchNorm across processes, as the official runs (GPUs only: PyTorch has no CPU version)."))
    push_to_hub: bool = False
    hub_model_id: str | None = field(default=None, metadata=_option(
        "Repo id to push to (default: the output folder name)."))
    hub_private: bool = False

    def resolved_checkpointing_steps(self) -> int:
        return self.eval_steps if self.checkpointing_steps is None else self.checkpointing_steps

    def check(self) -> None:
        """Values no run can use, named by their option."""
        for name in ("max_train_steps", "gradient_accumulation_steps", "logging_steps"):
            minimum = 0 if name == "max_train_steps" else 1
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name} must be at least {minimum}, got {getattr(self, name)}.")
        self.checkpointing_mode()

    def checkpointing_mode(self) -> str:
        """The one activation checkpointing mode of --activation_checkpointing / --gradient_checkpointing ("block"
        when neither is given)."""
        from ..modeling_s5 import parse_activation_checkpointing

        try:
            parse_activation_checkpointing(self.activation_checkpointing or "block")
        except ValueError as error:
            raise ValueError(f"--activation_checkpointing: {error}") from None
        if self.gradient_checkpointing and self.activation_checkpointing not in (None, "none", "block"):
            raise ValueError(f"--gradient_checkpointing (every block) contradicts --activation_checkpointing "
                             f"{self.activation_checkpointing}: give one of them.")
        if self.gradient_checkpointing or self.activation_checkpointing is None:
            return "block"
        return self.activation_checkpointing


@dataclass(kw_only=True)
class DataArguments:
    _argument_group_name = "data"

    batch_size: int = field(default=12, metadata=_option("Images per process and micro-batch."))
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata=_option(
        "Random rescale range (two numbers).", nargs=2))
    clip_percentiles: list[float] = field(default_factory=list, metadata=_option(
        "LOW HIGH, e.g. 2 98: for data other than 8-bit RGB, clip each band to these percentiles of the training "
        "images (S4P: the labeled ones; one streaming pass, stored in the saved image processor) before "
        "normalizing; default: no clipping.", nargs=2))

    def __post_init__(self):
        self.ratio_range = [float(v) for v in self.ratio_range]
        if len(self.ratio_range) != 2:
            raise ValueError(f"--ratio_range takes two numbers, got {self.ratio_range}.")
        self.clip_percentiles = [float(v) for v in self.clip_percentiles]
        if self.clip_percentiles and not 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100:
            raise ValueError(f"--clip_percentiles needs 0 <= LOW < HIGH <= 100, got {self.clip_percentiles}.")


# ---- S4P ---------------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class S4PDataArguments(DataArguments):
    labeled: str = field(metadata=_option("NAME=LOCATION of the labeled data (iSAID in the paper)."))
    labeled_split: str | None = field(default=None, metadata=_option(
        "Default: train (train_minus_heldout for a benchmark without a validation split)."))
    labeled_options: dict | str = field(default_factory=dict, metadata=_option(
        'JSON of reader options for a benchmark layout, e.g. \'{"patch_size": 512, "stride": 512}\' (the default '
        "patches of large-tile benchmarks are 512 px: smaller tiles become mostly padding), heldout_fraction; see "
        "s5_hf.data.load_benchmark.", type=json.loads))
    validation_split: str | None = field(default=None, metadata=_option(
        "Split of --labeled that selects the best model ('' = none; default: val, or heldout training tiles for a "
        "benchmark without a validation split)."))
    test_split: str | None = field(default=None, metadata=_option(
        "Split of --labeled scored at the end and reported, if not the validation split ('' = none; default: the "
        "benchmark's evaluation split)."))
    labels: str | None = field(default=None, metadata=_option(
        "id2label.json of the labeled data when it is not a benchmark (a JSON object {\"0\": \"background\", ...}); "
        "default: the folder's id2label.json or the shard card's."))
    unlabeled: str = field(metadata=_option(
        "NAME=LOCATION of the unlabeled data (RS4P shards; or a folder of image/mask pairs, whose masks are ignored)."))
    unlabeled_split: str = "train"
    nodata: str | None = field(default=None, metadata=_option(
        "VALUE (e.g. 0, nan): image nodata of folder sources (--labeled and --unlabeled), overriding the GeoTIFFs' "
        "own; such pixels are ignored by both losses and the metrics."))
    bands: str | None = field(default=None, metadata=_option(
        "The bands of folder sources (--labeled and --unlabeled) to train on, by 1-based number or GeoTIFF band "
        "description (e.g. 4,3,2 or red,green,blue); default: all bands."))
    batch_size: int = field(default=12, metadata=_option("Labeled images per process and micro-batch."))
    unlabeled_batch_size: int | None = field(default=None, metadata=_option("Default: --batch_size."))

    def __post_init__(self):
        super().__post_init__()
        self.labeled_options = json_object(self.labeled_options, "labeled_options")


@dataclass(kw_only=True)
class S4PArguments:
    _argument_group_name = "semi-supervision"

    conf_thresh: float = field(default=0.95, metadata=_option("Confidence threshold of the pseudo-labels."))
    cutmix_p: float = field(default=0.5, metadata=_option("Probability of a CutMix box per unlabeled image."))


@dataclass(kw_only=True)
class S4PRunArguments(RunArguments):
    """The official S4P run: AdamW lr 5e-5, weight decay 0.01, 120k steps, validation every 2000."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    eval_steps: int = field(default=2000, metadata=_option("Validate every N steps (0: only at the end)."))
    max_train_steps: int = field(default=120_000, metadata=_option("Optimizer steps."))


# ---- MoE-MDF -----------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MDFDataArguments(DataArguments):
    train_datasets: list[str] = field(metadata=_option(
        "NAME=LOCATION per dataset, in expert order (see s5_hf.data.streams)."))
    train_splits: list[str] = field(default_factory=list, metadata=_option(
        "NAME=SPLIT overrides (default: train; ISPRS: train_minus_heldout).", nargs="*"))
    validation_splits: list[str] = field(default_factory=list, metadata=_option(
        "NAME=SPLIT overrides of the model-selection split; NAME= skips its validation (default: the readers' "
        "declaration: ISPRS heldout = training tiles held out of training, others val).", nargs="*"))
    test_splits: list[str] = field(default_factory=list, metadata=_option(
        "NAME=SPLIT overrides of the split scored at the end and reported; NAME= skips it (default: the "
        "benchmark's evaluation split, ISPRS test, others val).", nargs="*"))
    reader_options: dict | str = field(default_factory=dict, metadata=_option(
        'JSON {NAME: options} for benchmark readers, e.g. \'{"potsdam": {"patch_size": 512}}\': patch_size/stride '
        "(ISPRS cut 512 px patches by default: smaller tiles become mostly padding), heldout_fraction (0.125), see "
        "s5_hf.data.load_benchmark.", type=json.loads))
    labels: list[str] = field(default_factory=list, metadata=_option(
        "NAME=id2label.json: the classes of a dataset that is not a benchmark (JSON object {\"0\": \"background\", "
        "...}); default: the folder's id2label.json or the shard card's id2label.", nargs="*"))
    ignore_index: list[str] = field(default_factory=list, metadata=_option(
        "NAME=ID: the mask value a dataset's loss and metrics ignore (default 255).", nargs="*"))
    nodata: list[str] = field(default_factory=list, metadata=_option(
        "VALUE or NAME=VALUE (e.g. 0, nan): image nodata of folder datasets, overriding the GeoTIFF's own; such "
        "pixels are ignored by the loss and the metrics.", nargs="*"))
    validation_split: list[str] = field(default_factory=list, metadata=_option(
        "FRACTION or NAME=FRACTION: part of a folder dataset without val/ held out (fixed seed, --seed) for model "
        "selection.", nargs="*"))
    bands: list[str] = field(default_factory=list, metadata=_option(
        "SPEC or NAME=SPEC: the bands of folder datasets to train on, by 1-based number or GeoTIFF band description "
        "(e.g. 4,3,2 or red,green,blue); default: all bands.", nargs="*"))
    batch_size: int = field(default=12, metadata=_option("Images per dataset, process and micro-batch."))

    def __post_init__(self):
        super().__post_init__()
        self.reader_options = json_object(self.reader_options, "reader_options")
        for name in ("train_datasets", "train_splits", "validation_splits", "test_splits", "labels", "ignore_index",
                     "nodata", "validation_split", "bands"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else [str(v) for v in value])


@dataclass(kw_only=True)
class MDFArguments:
    _argument_group_name = "losses, experts and LoRA"

    loss_weights: list[str] = field(default_factory=list, metadata=_option(
        "NAME=WEIGHT (default 1 each).", nargs="*"))
    loss_start: list[str] | None = field(default=None, metadata=_option(
        "NAME=FRACTION: the dataset's loss counts from that fraction of training on (official: Vaihingen from "
        "epoch 70 of 100). Pass --loss_start with no value to train all from step 0.", nargs="*"))
    mixed_batch: bool = field(default=True, metadata=_option(
        "One forward for all datasets (default) or one per dataset (--no_mixed_batch)."))
    part_features: int = field(default=256, metadata=_option(
        "Channels of each expert (the expert width; 0: no experts)."))
    train_only_new: bool = field(default=False, metadata=_option(
        "Add every --train_datasets dataset as a new task of the multi-task model --model_name_or_path "
        "(S5ForSemanticSegmentation.add_task) and train only the new tasks' experts, decoders and classifiers: the "
        "old tasks' outputs stay bit-identical."))
    lora: bool = field(default=False, metadata=_option(
        "Train one LoRA adapter per dataset on the frozen backbone instead of experts."))
    lora_r: int = field(default=16, metadata=_option("LoRA rank."))
    lora_alpha: float = field(default=32, metadata=_option("LoRA scaling numerator (scale = alpha / r)."))
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = field(default=None, metadata=_option(
        "Names (or dotted suffixes) of the encoder's linear layers to adapt (default: q_proj k_proj v_proj o_proj "
        "fc1 fc2)."))

    def __post_init__(self):
        for name in ("loss_weights", "loss_start", "lora_target_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])


@dataclass(kw_only=True)
class MDFRunArguments(RunArguments):
    """The official MoE-MDF run: AdamW lr 5e-5, weight decay 0.05, 105,800 steps, validation every 1000."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.05
    eval_steps: int = field(default=1000, metadata=_option("Validate every N steps (0: only at the end)."))
    max_train_steps: int = field(default=105_800, metadata=_option("Optimizer steps."))


# ---- detection ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DetectionArguments:
    _argument_group_name = "detection"

    dior_root: str = field(metadata=_option(
        "DIOR-R folder (ImageSets/Main, JPEGImages-*, Annotations), or Parquet shards of its trainval and test rows."))
    dota_root: str = field(metadata=_option(
        "DOTA-v2 folder with train/{images,labelTxt}, or Parquet shards of its training patches (split train)."))
    output_dir: str = field(metadata=_option(
        "An empty or new folder, or this run's own with --resume_from_checkpoint / --overwrite_output_dir."))
    overwrite_output_dir: bool = field(default=False, metadata=_option(
        "Delete what an earlier run wrote into --output_dir (only that) and start afresh."))
    push_to_hub: bool = field(default=False, metadata=_option(
        "Publish the final model with a card of this run's mAP."))
    hub_model_id: str | None = field(default=None, metadata=_option(
        "Repo id to push to (default: the output folder's name)."))
    hub_private: bool = False
    dior_classes: int = field(default=len(DIOR_R_CLASSES), metadata=_option("Use the first N classes (tests)."))
    dota_classes: int = field(default=len(DOTA_V2_CLASSES), metadata=_option("Use the first N classes (tests)."))
    image_size: int = 1024
    dota_patch_size: int = 1024
    dota_overlap: int = 200
    per_dataset_batch: int = 2
    epochs: int = 12
    decay_epochs: list[int] = field(default_factory=lambda: [8, 11], metadata=_option(
        "Epochs after which the lr is multiplied by 0.1.", nargs="*"))
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    max_grad_norm: float = 35.0
    warmup_steps: int = 500
    warmup_ratio: float = 0.001
    max_steps: int = field(default=0, metadata=_option("Stop after this many steps (0: the whole schedule)."))
    checkpointing_steps: int = 1000
    keep_checkpoints: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata=_option(
        "A checkpoint folder, or 'latest' for the newest one in --output_dir. Resuming unpickles accelerate's "
        "state files: use only checkpoints you trust."))
    max_eval_samples: int = 0
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0

    def __post_init__(self):
        self.decay_epochs = [int(v) for v in self.decay_epochs]


# ---- parsing -----------------------------------------------------------------------------------------------------
class S5ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` that also (1) applies the `nargs`/`type` a field's metadata asks for (`--loss_start` with
    no value, a pair of numbers, JSON options), (2) keeps `argparse.BooleanOptionalAction`'s `--no-<name>` spelling
    of a negated flag beside HfArgumentParser's `--no_<name>`, and (3) reads a run from a YAML/JSON file given as the
    first argument, flags after it overriding the file's values."""

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        extra = field.metadata.get("s5", {})
        if extra:
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k != "s5"})
        HfArgumentParser._parse_dataclass_field(parser, field)
        action = next(a for a in parser._actions if f"--{field.name}" in a.option_strings)
        for key, value in extra.items():
            setattr(action, key, value)
        if field.default is True and "_" in field.name:
            parser.add_argument(f"--no-{field.name}", action="store_false", dest=field.name, default=True,
                                help=argparse.SUPPRESS)

    def parse(self, argv: Sequence[str] | None = None) -> tuple:
        """The dataclasses of `argv` (a command line, or a config file followed by overriding flags)."""
        import sys

        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_SUFFIXES):
            path = argv.pop(0)
            try:
                self.use_config_file(path)
            except (OSError, ValueError) as error:  # missing or unreadable file, not a mapping, bad JSON/YAML
                self.error(str(error))
        namespace = self.parse_args(argv)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            try:
                outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in names}))
            except ValueError as error:
                self.error(str(error))
        return tuple(outputs)

    def use_config_file(self, path: str | Path) -> None:
        """Make the values of a YAML/JSON run file the defaults of this parser (unknown keys are refused)."""
        values = read_config_file(path)
        known = {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            self.error(f"{path}: unknown keys {unknown}; the options of this program are {sorted(known)}.")
        for action in self._actions:
            if action.dest in values:
                value = values[action.dest]
                # A flag that takes a JSON string on the command line takes a mapping in a file (and a string too).
                action.default = json.dumps(value) if isinstance(value, dict) and action.type is str else value
                action.required = False


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    import yaml

    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"Config file {path} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must hold a mapping of option names to values.")
    return values


def argument_record(*groups: Any) -> dict:
    """One flat {option: value} record of the argument dataclasses (the run manifest, the trackers' config)."""
    out: dict = {}
    for group in groups:
        out.update(dataclasses.asdict(group))
    return out


S4P_ARGUMENTS = (ModelArguments, S4PDataArguments, S4PArguments, S4PRunArguments)
MDF_ARGUMENTS = (ModelArguments, MDFDataArguments, MDFArguments, MDFRunArguments)
DETECTION_ARGUMENTS = (ModelArguments, DetectionArguments)

__all__ = [
    "DETECTION_ARGUMENTS", "DataArguments", "DetectionArguments", "MDFArguments", "MDFDataArguments", "MDF_ARGUMENTS",
    "MDFRunArguments", "ModelArguments", "RunArguments", "S4PArguments", "S4PDataArguments", "S4PRunArguments",
    "S4P_ARGUMENTS", "S5ArgumentParser", "argument_record", "json_object", "read_config_file",
]
