"""Fine-tune S5 for semantic segmentation with `transformers.Trainer`.

    python examples/trainer_finetune.py --train_dataset potsdam=/data/Potsdam \
        --model_name_or_path runs/s4p-vit-b/model --output_dir runs/potsdam-trainer \
        --max_steps 20000 --per_device_train_batch_size 8 --learning_rate 5e-5

`S5ForSemanticSegmentation.forward` takes `pixel_values`, `task` and `labels` and returns the loss, so the model
trains with the stock `Trainer` and any of its `TrainingArguments` (mixed precision, gradient accumulation,
`report_to`, checkpoints, `push_to_hub`...). The data is one dataset (`NAME=LOCATION`: a benchmark layout, a folder
of image/mask pairs, Parquet shards or a Hub id, see `s5_hf.data.streams`) streamed with the weak augmentation of
the S5 recipes (random rescale, crop, flips; `s5_hf.training.augment`), each image augmented from its own seed.
`--max_steps` is required: the data is a stream.

The model starts from `--model_name_or_path` when it has the dataset's head already (e.g. a published MoE-MDF
model), from a single-task model whose backbone and decoder are kept with a new head otherwise
(`S5ForSemanticSegmentation.from_single_task`), or fresh from `--preset` / `--config_overrides`. The repository's
own programs (`training/finetune_mdf.py`, `training/pretrain_s4p.py`) add what `Trainer` does not do: several
datasets per step, the benchmarks' evaluation protocols, S4P's semi-supervision.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from s5_hf import S5Config, S5ForSemanticSegmentation, S5ImageProcessor
from s5_hf.data.streams import DataSource
from s5_hf.training.augment import AugmentedDataset, LabeledTransform


@dataclass
class ExampleArguments:
    train_dataset: str = field(metadata={"help": "NAME=LOCATION of the training data (see s5_hf.data.streams)."})
    train_split: str | None = field(default=None, metadata={"help": "Default: the dataset's training split."})
    reader_options: str = field(default="{}", metadata={"help": 'JSON reader options, e.g. \'{"patch_size": 512}\'.'})
    model_name_or_path: str | None = field(default=None, metadata={"help": "An S5 folder or Hub id."})
    preset: str = field(default="vit-b", metadata={"help": "Backbone of a new model: vit-b, vit-l, vit-h."})
    config_overrides: str = field(default="{}", metadata={"help": "JSON of S5Config fields of a new model."})
    crop_size: int = 512
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])


class SegmentationCollator:
    """(image, mask) pairs -> the model's keyword arguments: `pixel_values`, `labels` and the dataset's `task`."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, pairs):
        return {"pixel_values": torch.stack([image for image, _ in pairs]),
                "labels": torch.stack([mask for _, mask in pairs]), "task": self.task}


def build_model(arguments: ExampleArguments, source: DataSource) -> S5ForSemanticSegmentation:
    task = source.task()
    overrides = json.loads(arguments.config_overrides)
    if not arguments.model_name_or_path:
        return S5ForSemanticSegmentation(S5Config.from_preset(arguments.preset, tasks=[task], **overrides))
    model = S5ForSemanticSegmentation.from_pretrained(arguments.model_name_or_path)
    if task.name in model.config.task_names:
        return model
    if len(model.config.tasks) != 1:
        raise ValueError(f"{arguments.model_name_or_path} has heads {model.config.task_names}, not {task.name!r}: "
                         "start from a single-task model (its head is replaced) or one with that head.")
    fields = {k: v for k, v in model.config.to_dict().items() if k in S5Config.__dataclass_fields__}
    config = S5Config(**{**fields, "tasks": [task], "default_task": None, "out_indices": model.config.out_indices})
    return S5ForSemanticSegmentation.from_single_task(model, config, copy_decoder=True)


def build_dataset(arguments: ExampleArguments, source: DataSource, seed: int) -> AugmentedDataset:
    split = arguments.train_split or source.default_splits()[0]
    rows = source.load(split, **json.loads(arguments.reader_options))
    return AugmentedDataset(rows, LabeledTransform(arguments.crop_size, tuple(arguments.ratio_range)), seed=seed)


def main(argv: list[str] | None = None) -> Trainer:
    parser = HfArgumentParser((ExampleArguments, TrainingArguments))
    arguments, training = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    if training.max_steps <= 0:
        parser.error("--max_steps is required: the training data is a stream without a length.")
    # The collator returns the task name beside the tensors: keep it (Trainer drops unknown dataset columns).
    training = dataclasses.replace(training, remove_unused_columns=False) if training.remove_unused_columns \
        else training
    source = DataSource.parse(arguments.train_dataset)
    torch.manual_seed(training.seed)
    model = build_model(arguments, source)
    trainer = Trainer(model=model, args=training, train_dataset=build_dataset(arguments, source, training.seed),
                      data_collator=SegmentationCollator(source.name))
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        S5ImageProcessor().save_pretrained(training.output_dir)
    return trainer


if __name__ == "__main__":
    main()
