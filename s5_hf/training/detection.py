"""Oriented object detection: fine-tune S5 on DIOR-R and DOTA-v2 at once (the paper's detection recipe).

    accelerate launch training/finetune_detection.py --model_name_or_path runs/s4p-vit-b/model \
        --dior_root /data/DIOR-R --dota_root /data/DOTA-v2 --output_dir runs/det-vit-b
    accelerate launch training/finetune_detection.py configs/detection_vit_b.yaml   # the same run from a file

The backbone starts from a single-task S5 model (S4P: experts = the tail rows of its FFN output layer, position
table resized to --image_size, neck copied; `S5ForOrientedDetection.from_single_task`) or from scratch without
--model_name_or_path. Each step takes --per_dataset_batch images of every dataset (2 + 2 per process in the
paper) into one backbone forward, sums the datasets' losses unweighted; the shorter dataset is repeated (every
step samples each dataset independently). Recipe defaults: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05
(0 on the position table), gradient clipping 35 (L2), linear warm-up over 500 steps from 0.001x, x0.1 at epochs 8
and 11 of 12 (an epoch = the longer dataset once), mixed precision from `accelerate`. Images are resized to
--image_size on the long side (DIOR-R 800 -> 1024), padded to a square, flipped horizontally and vertically
(p = 0.5 each); DOTA-v2 training patches are 1024 px with 200 px overlap, empty ones dropped.
Evaluation: the DIOR-R test mAP (VOC07 11-point, IoU 0.5) after every epoch, written to `metrics.jsonl`.
The output folder behaves as segmentation's (`s5_hf.training.loop`): one run per folder (`RunFolder`: a manifest
of what the run wrote; a folder of another run or program is refused, `--overwrite_output_dir` deletes only what
the earlier run wrote), metrics appended to `metrics.jsonl` (`MetricsLog`, no NaN), checkpoints
(`checkpoint-<step>`, every --checkpointing_steps, the last --keep_checkpoints kept) holding the accelerate state
with a sha256 integrity record that is verified before resuming (`--resume_from_checkpoint <folder>|latest`; data
order is a function of seed and step, so a resumed run draws the same batches). The final model and image
processor go to `<output_dir>/model`; `--push_to_hub` publishes them (`--hub_model_id`) with a card carrying the
DIOR-R test mAP this run measured.

Options: `s5_hf.training.arguments` (`DETECTION_ARGUMENTS`). Not implemented yet (see the issue): Parquet shard
inputs, DOTA-v2 test-server export during training (use `s5_hf.detection.merge_patch_detections` /
`write_dota_submission` on predictions).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from .. import files
from ..configuration_s5_detection import DIOR_R_CLASSES, DOTA_V2_CLASSES, S5DetectionConfig
from ..detection import read_dior_r, read_dota, rotated_voc_map
from ..detection.shards import is_shard_folder, read_detection_shards
from ..image_processing_s5_detection import S5DetectionImageProcessor
from ..modeling_s5_detection import S5ForOrientedDetection
from ..obb_geometry import regularize_obb
from .arguments import DETECTION_ARGUMENTS, DetectionArguments, ModelArguments, S5ArgumentParser, argument_record
from .loop import (
    MetricsLog, RunFolder, fused_adamw_supported, list_checkpoints, resolve_checkpoint, verify_checkpoint,
    write_integrity_record,
)

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)  # ImageNet statistics on the 0-255 scale
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


@dataclass(frozen=True)
class DetectionRun:
    """A parsed detection run: the option groups as given, and the config overrides as a mapping."""

    model: ModelArguments
    detection: DetectionArguments
    config_overrides: dict

    def record(self) -> dict:
        return argument_record(self.model, self.detection)


def parser() -> S5ArgumentParser:
    return S5ArgumentParser(DETECTION_ARGUMENTS, description=__doc__.split("\n\n")[0])


def parse_args(argv=None) -> DetectionRun:
    """The run of a command line, or of a config file (first argument) with overriding flags; a bad value exits
    with the parser's usage message naming the option."""
    p = parser()
    model, args = p.parse(argv)
    if args.per_dataset_batch < 1:
        p.error(f"--per_dataset_batch must be at least 1, got {args.per_dataset_batch}")
    if args.push_to_hub and args.hub_model_id:
        from ..hub.publish import PublishError, check_repo_id

        try:  # found before training, not after hours of it
            check_repo_id(args.hub_model_id)
        except (PublishError, ValueError) as error:
            p.error(f"--hub_model_id: {error}")
    try:
        overrides = model.overrides()
    except ValueError as error:
        p.error(str(error))
    return DetectionRun(model, args, overrides)


def prepare(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the long side to `size` (boxes scaled alike), pad to `size` x `size`, normalise."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale != 1:
        image = np.asarray(Image.fromarray(image).resize((round(width * scale), round(height * scale)), Image.BILINEAR))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    pixels = (torch.from_numpy(canvas).permute(2, 0, 1).float() - MEAN) / STD
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 5).clone()
    boxes[:, :4] *= scale
    return pixels, boxes


def flip(pixels: torch.Tensor, boxes: torch.Tensor, horizontal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    size = pixels.shape[-1] if horizontal else pixels.shape[-2]
    boxes = boxes.clone()
    axis = 0 if horizontal else 1
    boxes[:, axis] = size - boxes[:, axis]
    boxes[:, 4] = -boxes[:, 4]  # a mirror image turns the other way
    return pixels.flip(-1 if horizontal else -2), regularize_obb(boxes)


def lr_factor(step: int, args, steps_per_epoch: int) -> float:
    decay = 0.1 ** sum(step >= e * steps_per_epoch for e in args.decay_epochs)
    if step < args.warmup_steps:
        return decay * (args.warmup_ratio + (1 - args.warmup_ratio) * step / args.warmup_steps)
    return decay


def sample_batch(data: dict, step: int, args) -> tuple[torch.Tensor, list[dict], list[str]]:
    rng = np.random.default_rng([args.seed, step])  # batches depend on (seed, step) only: resumable
    pixels, targets, tasks = [], [], []
    for task, rows in data.items():
        for i in rng.choice(len(rows), args.per_dataset_batch, replace=len(rows) < args.per_dataset_batch):
            x, boxes = prepare(rows[i]["image"], rows[i]["boxes"], args.image_size)
            for horizontal in (True, False):
                if rng.random() < 0.5:
                    x, boxes = flip(x, boxes, horizontal)
            pixels.append(x)
            targets.append({"boxes": boxes, "labels": torch.as_tensor(rows[i]["labels"], dtype=torch.long)})
            tasks.append(task)
    return torch.stack(pixels), targets, tasks


def evaluate_dior(model, rows, args, accelerator) -> float:
    model.eval()
    detections, truths = [], []
    with torch.no_grad():
        for row in rows:
            x, _ = prepare(row["image"], row["boxes"], args.image_size)
            out = model(x[None].to(accelerator.device), task="dior")
            scale = args.image_size / max(row["image"].shape[:2])
            boxes = out.boxes[0].float().cpu().clone()
            boxes[:, :4] /= scale
            detections.append({"boxes": boxes, "scores": out.scores[0].cpu(), "labels": out.labels[0].cpu()})
            truths.append({"boxes": row["boxes"], "labels": row["labels"], "difficult": row["difficult"]})
    model.train()
    return rotated_voc_map(detections, truths, args.dior_classes)["map"]


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("position_embeddings") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(run: DetectionRun) -> S5ForOrientedDetection:
    args = run.detection
    tasks = [{"name": "dior", "id2label": dict(enumerate(DIOR_R_CLASSES[: args.dior_classes]))},
             {"name": "dota", "id2label": dict(enumerate(DOTA_V2_CLASSES[: args.dota_classes]))}]
    fields = {"tasks": tasks, "image_size": args.image_size, **run.config_overrides}
    if run.model.model_name_or_path:
        from transformers import AutoModel

        pretrained = AutoModel.from_pretrained(run.model.model_name_or_path)
        backbone = {k: getattr(pretrained.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                               "mlp_ratio", "patch_size", "num_channels", "out_indices")}
        return S5ForOrientedDetection.from_single_task(pretrained, S5DetectionConfig(**{**backbone, **fields}))
    return S5ForOrientedDetection(S5DetectionConfig.from_preset(run.model.preset, **fields))


def save_model(accelerator, model, folder: Path, args) -> None:
    if accelerator.is_main_process:
        with files.staged_directory(folder) as staging:
            accelerator.unwrap_model(model).save_pretrained(staging, safe_serialization=True)
            S5DetectionImageProcessor(size={"height": args.image_size, "width": args.image_size}).save_pretrained(staging)
    accelerator.wait_for_everyone()


def dior_rows(args, split: str):
    """DIOR-R rows of `split` ("trainval" or "test") from the dataset's own layout or from Parquet shards."""
    classes = DIOR_R_CLASSES[: args.dior_classes]
    if is_shard_folder(args.dior_root):
        return read_detection_shards(args.dior_root, split, "dior", classes)
    return read_dior_r(args.dior_root, split, classes)


def dota_rows(args):
    """DOTA-v2 training patches: cut from the dataset's own layout, or as stored in Parquet shards ("train")."""
    classes = DOTA_V2_CLASSES[: args.dota_classes]
    if is_shard_folder(args.dota_root):
        return read_detection_shards(args.dota_root, "train", "dota", classes)
    return read_dota(args.dota_root, "train", classes, args.dota_patch_size, args.dota_overlap)


def main(argv=None) -> dict:
    parsed = parse_args(argv)
    args = parsed.detection
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    output = Path(args.output_dir)
    # Refuses a folder of another run before anything is read or written.
    run = RunFolder.open(accelerator, output, arguments=parsed.record(),
                         resume_from_checkpoint=args.resume_from_checkpoint, overwrite=args.overwrite_output_dir)
    torch.manual_seed(args.seed)
    data = {"dior": list(dior_rows(args, "trainval")), "dota": list(dota_rows(args))}
    for task, rows in data.items():
        if not rows:
            raise ValueError(f"No {task} training images found under {args.dior_root if task == 'dior' else args.dota_root}.")
    test_rows = list(dior_rows(args, "test"))
    if args.max_eval_samples:
        test_rows = test_rows[: args.max_eval_samples]

    model = build_model(parsed)
    if args.gradient_checkpointing:
        model.set_activation_checkpointing("block")
    groups = param_groups(model, args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.999),
                                  fused=fused_adamw_supported(p for group in groups for p in group["params"]))
    steps_per_epoch = max(1, math.ceil(max(len(r) for r in data.values()) / (args.per_dataset_batch * accelerator.num_processes)))
    total = args.epochs * steps_per_epoch if not args.max_steps else min(args.max_steps, args.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args, steps_per_epoch))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start = 0
    log = MetricsLog(accelerator, output, run)
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output)
    if checkpoint is not None:
        verify_checkpoint(checkpoint)  # a damaged or edited checkpoint is refused before anything is unpickled
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        log.truncate(start)  # records of steps after the checkpoint belong to the abandoned trajectory
    model.train()
    history = log.records()
    for step in range(start, total):
        pixels, targets, tasks = sample_batch(data, step * accelerator.num_processes + accelerator.process_index, args)
        targets = [{k: v.to(accelerator.device) for k, v in t.items()} for t in targets]
        out = model(pixels.to(accelerator.device), task=tasks, targets=targets)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"Step {step}: the loss is {out.loss.item()} ({ {k: v.item() for k, v in out.loss_dict.items()} }).")
        accelerator.backward(out.loss)
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        done = step + 1
        record = {"step": done, "loss": out.loss.item(), "lr": scheduler.get_last_lr()[0]}
        if done % steps_per_epoch == 0 or done == total:
            record["dior_test_map"] = evaluate_dior(model, test_rows, args, accelerator)
        history.append(record)
        log.log(done, {k: v for k, v in record.items() if k != "step"})
        if done % args.checkpointing_steps == 0 or done == total:
            save_checkpoint(accelerator, output, done, args.keep_checkpoints, run)
    run.claim("model")
    save_model(accelerator, model, output / "model", args)
    run.claim()  # lists the model's files in the manifest
    result = {"steps": total, "history": history, "run_id": run.run_id}
    if args.push_to_hub:
        result["commit_url"] = push(accelerator, args, history, run, len(test_rows))
    accelerator.end_training()  # as S4P and MDF: destroys the process group of a multi-process run
    return result


def save_checkpoint(accelerator, output: Path, step: int, keep: int, run: RunFolder) -> Path:
    """`checkpoint-<step>`: accelerate state staged in a hidden folder, the integrity record written last, swapped
    in atomically; then this run's older checkpoints beyond `keep` and any of a later step (the trajectory a
    resumed run abandoned) are deleted, through the run's manifest only."""
    final = output / f"checkpoint-{step:06d}"
    staging = output / f".{final.name}.partial"
    if accelerator.is_main_process:
        run.claim(final.name)
        if staging.exists():
            shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files.write_json(staging / "trainer_state.json", {"step": step})
        write_integrity_record(staging)
        files.replace_directory(staging, final)
        run.claim()
        found = [(int(p.name.split("-")[1]), p) for p in list_checkpoints(output)]
        earlier = [p for s, p in found if s < step]
        stale = [p for s, p in found if s > step] + earlier[: max(len(earlier) - (keep - 1), 0)]
        for old in stale:
            run.remove(old.name)
    accelerator.wait_for_everyone()
    return final


def push(accelerator, args, history: list[dict], run: RunFolder, num_test: int) -> str | None:
    """Publish `<output_dir>/model` with a card carrying the last DIOR-R test mAP this run measured."""
    from ..hub.cards import build_model_card, measured_eval_result
    from ..hub.publish import PublishError, publish_model

    url = None
    if accelerator.is_main_process:
        folder = Path(args.output_dir) / "model"
        repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
        measured = [r for r in history if r.get("dior_test_map") is not None]
        if not measured:
            raise PublishError("This run measured no DIOR-R test mAP: there is no result for the model card.")
        last = measured[-1]
        scope = f"DIOR-R test split, {num_test} images, step {last['step']}"
        if args.max_eval_samples:
            scope += ", capped by --max_eval_samples (not the whole split)"
        result = measured_eval_result("dior", last["dior_test_map"], repo_id, scope)
        config = S5ForOrientedDetection.config_class.from_pretrained(folder)
        summary = (f"Fine-tuned on DIOR-R and DOTA-v2 together by `training/finetune_detection.py` for "
                   f"{last['step']} steps; DIOR-R mAP (VOC07 11-point, rotated IoU 0.5) measured by this run on the "
                   f"{scope}.")
        card = build_model_card(config, repo_id, eval_results=[result], results_intro=summary)
        card.save(folder / "README.md")
        run.claim()
        url = publish_model(folder, repo_id, card=card, private=args.hub_private)["commit_url"]
    accelerator.wait_for_everyone()
    return url


__all__ = ["DetectionRun", "build_model", "evaluate_dior", "flip", "lr_factor", "main", "param_groups", "parse_args",
           "parser", "prepare", "sample_batch", "save_checkpoint", "save_model"]
