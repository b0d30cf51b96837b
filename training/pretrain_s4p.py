"""S4P: semi-supervised segmentation pretraining of S5 (FixMatch/UniMatch form, as in the paper).

    accelerate launch training/pretrain_s4p.py \
        --labeled isaid=/data/iSAID --unlabeled rs4p=/data/rs4p-1m --output_dir runs/s4p-vit-b

Each step: a labeled batch (weak augmentation) with cross-entropy; an unlabeled batch u and an independent partner
batch u_mix. The same network, in eval mode and without gradients, predicts the weak views of both: pseudo-label =
argmax, confidence = max softmax. u's strong view gets u_mix's strong view pasted inside its CutMix box (and the box
takes u_mix's pseudo-labels). loss_u = CE on the strong view where confidence >= 0.95, over the valid pixels;
total = (loss_x + loss_u) / 2. AdamW (lr 5e-5, weight decay 0.01 on every parameter), cosine to 0.

The defaults are the official run's (crop 512, batch 12 + 12 per process, 120k steps, validation every 2000).
No EMA teacher, no rotation: as the official code. Unlike it, the CutMix partner is an independent
draw on every process. Data sources: see `s5_hf.data.streams` (benchmark layouts, Parquet shard folders, Hub ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from s5_hf import S5ForSemanticSegmentation
from s5_hf.training.augment import LabeledTransform, UnlabeledTransform
from s5_hf.data.streams import DataSource, TrainStream, process_part, read_id2label
from s5_hf.evaluation.protocols import evaluate_sources
from s5_hf.label_sets import LABEL_SETS
from s5_hf.training.losses import s4p_losses
from s5_hf.training.loop import (
    add_common_arguments, add_model_arguments, check_task_classes, config_from_arguments,
    make_accelerator, prepare_training, push_to_hub, run_training,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--labeled", required=True, help="NAME=LOCATION of the labeled data (iSAID in the paper).")
    data.add_argument("--labeled_split", default=None,
                      help="Default: train (train_minus_heldout for a benchmark without a validation split).")
    data.add_argument("--labeled_options", type=json.loads, default={},
                      help='JSON of reader options for a benchmark layout, e.g. \'{"patch_size": 512, "stride": 512}\' '
                           "(the default patches of large-tile benchmarks are 512 px: smaller tiles become mostly "
                           "padding), heldout_fraction; see s5_hf.data.load_benchmark.")
    data.add_argument("--validation_split", default=None,
                      help="Split of --labeled that selects the best model ('' = none; default: val, or heldout "
                           "training tiles for a benchmark without a validation split).")
    data.add_argument("--test_split", default=None,
                      help="Split of --labeled scored at the end and reported, if not the validation split ('' = "
                           "none; default: the benchmark's evaluation split).")
    data.add_argument("--labels", default=None,
                      help="id2label.json of the labeled data when it is not a benchmark (a JSON object "
                           '{"0": "background", ...}); default: the folder\'s id2label.json or the shard card\'s.')
    data.add_argument("--unlabeled", required=True, help="NAME=LOCATION of the unlabeled data (RS4P shards).")
    data.add_argument("--unlabeled_split", default="train")
    data.add_argument("--batch_size", type=int, default=12, help="Labeled images per process and step.")
    data.add_argument("--unlabeled_batch_size", type=int, default=None, help="Default: --batch_size.")
    data.add_argument("--ratio_range", type=float, nargs=2, default=(0.5, 2.0), help="Random rescale range.")
    semi = parser.add_argument_group("semi-supervision")
    semi.add_argument("--conf_thresh", type=float, default=0.95)
    semi.add_argument("--cutmix_p", type=float, default=0.5)
    add_model_arguments(parser)
    add_common_arguments(parser, learning_rate=5e-5, weight_decay=0.01, eval_steps=2000, max_train_steps=120_000)
    args = parser.parse_args(argv)
    args.unlabeled_batch_size = args.unlabeled_batch_size or args.batch_size
    args.labeled_source = DataSource.parse(args.labeled, "isaid")
    if args.labels:
        args.labeled_source = dataclasses.replace(args.labeled_source, id2label=read_id2label(args.labels))
    train, validation, test = args.labeled_source.default_splits()
    args.labeled_split = train if args.labeled_split is None else args.labeled_split
    args.validation_split = validation if args.validation_split is None else args.validation_split
    args.test_split = test if args.test_split is None else args.test_split
    return args


def build_model(args: argparse.Namespace, task: str | dict) -> S5ForSemanticSegmentation:
    """A new model with the one head `task` (a benchmark name or {"name", "id2label", "ignore_index"}), or the
    given one, whose head must be `task`."""
    name = task if isinstance(task, str) else task["name"]
    if args.model_name_or_path:
        if args.config_overrides:
            raise ValueError("--config_overrides builds a new model; it cannot be combined with --model_name_or_path.")
        model = S5ForSemanticSegmentation.from_pretrained(args.model_name_or_path)
        if model.config.task_names != [name]:
            raise ValueError(f"{args.model_name_or_path} has heads {model.config.task_names}; S4P trains one head, "
                             f"{name!r} (the name of the labeled data).")
        return model
    return S5ForSemanticSegmentation(config_from_arguments(args, [task]))


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    labeled, unlabeled = args.labeled_source, DataSource.parse(args.unlabeled, "rs4p")
    torch.manual_seed(args.seed)  # the same initial weights on every process
    wanted = labeled.task()
    model = build_model(args, wanted)
    task = model.config.tasks[0]
    classes = LABEL_SETS[wanted].num_classes if isinstance(wanted, str) else len(wanted["id2label"])
    check_task_classes(model.config, labeled.name, classes, args.labeled)

    rank, world = accelerator.process_index, accelerator.num_processes
    crop = args.crop_size
    streams = {
        "labeled": TrainStream(process_part(labeled.load(args.labeled_split, **args.labeled_options), rank, world),
                               LabeledTransform(crop, tuple(args.ratio_range)), args.batch_size, seed=args.seed,
                               shuffle_buffer=args.shuffle_buffer, num_workers=args.num_workers, name=args.labeled),
        # Two independent draws of the unlabeled data: u and its CutMix partner u_mix.
        **{name: TrainStream(process_part(unlabeled.load(args.unlabeled_split), rank, world),
                             UnlabeledTransform(crop, tuple(args.ratio_range), cutmix_p=args.cutmix_p),
                             args.unlabeled_batch_size, seed=args.seed + offset, shuffle_buffer=args.shuffle_buffer,
                             num_workers=args.num_workers, name=args.unlabeled)
           for name, offset in (("unlabeled", 1), ("unlabeled_mix", 2))},
    }

    model, optimizer, scheduler = prepare_training(accelerator, model, args)
    device = accelerator.device

    def compute_losses(step: int):
        batches = [[t.to(device) for t in next(streams[name])] for name in ("labeled", "unlabeled", "unlabeled_mix")]
        return s4p_losses(model, *batches, ignore_index=task["ignore_index"], threshold=args.conf_thresh)

    validation = {task["name"]: labeled} if args.validation_split else {}
    tested = {task["name"]: labeled} if args.test_split and args.test_split != args.validation_split else {}

    def evaluate():
        return evaluate_sources(model, validation, args.validation_split, crop_size=crop, accelerator=accelerator,
                                max_samples=args.max_eval_samples, batch_size=args.eval_batch_size,
                                reader_options={task["name"]: args.labeled_options})

    def test():
        return evaluate_sources(model, tested, args.test_split, crop_size=crop, accelerator=accelerator,
                                max_samples=args.max_eval_samples, batch_size=args.eval_batch_size,
                                reader_options={task["name"]: args.labeled_options})

    def selection(results) -> float:
        return results[task["name"]].scores.mean_iou if results else 0.0

    outcome = run_training(accelerator, model, optimizer, scheduler, args, streams=streams,
                           compute_losses=compute_losses, evaluate=evaluate, selection=selection,
                           test=test if tested else None)
    if args.push_to_hub:
        outcome["commit_url"] = push_to_hub(accelerator, args, outcome, stage="s4p", run_summary=(
            f"This model was trained by `training/pretrain_s4p.py` for {args.max_train_steps} steps (labeled "
            f"{args.labeled}, unlabeled {args.unlabeled}); the results are its own evaluation (split and sample cap per "
            "result)."))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return outcome


if __name__ == "__main__":
    main(sys.argv[1:])
