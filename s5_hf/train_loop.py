"""What the two training programs (`training/pretrain_s4p.py`, `training/finetune_mdf.py`) share.

Command-line arguments common to both, the optimiser (AdamW, optional layer-wise lr decay) and cosine schedule,
crash-safe checkpoints with exact resume, the NaN guard, the metrics log (JSON lines + a PNG of the curves) and
publishing to the Hub. The loops themselves stay in the scripts, in the style of transformers'
`examples/pytorch/*_no_trainer.py`.

Checkpoint folder (`<output_dir>/checkpoint-<step>/`), written under a `.partial` name and renamed when complete,
so a kill never leaves a half-written checkpoint that `--resume_from_checkpoint latest` would pick:

    accelerate state (model, optimizer, scheduler, scaler, RNG of every process)
    data_state_<rank>.json      position of every data stream of that process
    trainer_state.json          step, metrics history, best score (written last)
    model/                      `save_pretrained` folder (safetensors, config, processor, code)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from PIL import Image, ImageDraw
from tqdm.auto import tqdm
from transformers import get_scheduler

from .configuration_s5 import S5Config
from .image_processing_s5 import S5ImageProcessor
from .metrics import save_confusion_matrix_png
from .modeling_s5 import BACKBONE_KEYS

logger = get_logger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Config fields that must agree between a checkpoint and the model a run builds: the weight shapes, and the
# expert width.
ARCHITECTURE_KEYS = (*BACKBONE_KEYS, "part_features")


def add_common_arguments(parser: argparse.ArgumentParser, *, learning_rate: float, weight_decay: float,
                         eval_steps: int, max_train_steps: int) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", required=True, help="Checkpoints, logs and the final model go here.")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--max_train_steps", type=int, default=max_train_steps)
    group.add_argument("--learning_rate", type=float, default=learning_rate)
    group.add_argument("--weight_decay", type=float, default=weight_decay)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--lr_scheduler_type", default="cosine", help="Any transformers scheduler name.")
    group.add_argument("--num_warmup_steps", type=int, default=0)
    group.add_argument("--layer_decay", type=float, default=None,
                       help="Layer-wise lr decay (e.g. 0.9); off by default, as in the effective official recipe.")
    group.add_argument("--max_grad_norm", type=float, default=None, help="Gradient clipping (off by default).")
    group.add_argument("--crop_size", type=int, default=512)
    group.add_argument("--num_workers", type=int, default=0, help="DataLoader workers per stream.")
    group.add_argument("--shuffle_buffer", type=int, default=1000)
    group.add_argument("--eval_steps", type=int, default=eval_steps, help="Validate every N steps (0: only at the end).")
    group.add_argument("--max_eval_samples", type=int, default=None, help="Cap the validation images per dataset.")
    group.add_argument("--checkpointing_steps", type=int, default=None,
                       help="Save a resumable checkpoint every N steps (default: every --eval_steps).")
    group.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep the N newest checkpoints.")
    group.add_argument("--resume_from_checkpoint", default=None,
                       help="A checkpoint folder, or 'latest' for the newest one in --output_dir.")
    group.add_argument("--logging_steps", type=int, default=10)
    group.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                       help="AMP (default: accelerate's configuration; the official runs use fp16 on GPUs).")
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", default=None, help="Repo id to push to (default: the output folder name).")
    group.add_argument("--hub_private", action="store_true")


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.checkpointing_steps is None:
        args.checkpointing_steps = args.eval_steps
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        for stale in Path(args.output_dir).glob("checkpoint-*.partial"):
            logger.warning("Removing %s, a checkpoint an interrupted run did not finish writing.", stale)
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return accelerator


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model_name_or_path", default=None,
                       help="An S5 folder or Hub id to start from (S4P: e.g. a converted checkpoint; MDF: the S4P model).")
    group.add_argument("--preset", default="vit-b", help="Backbone preset when no model is given: vit-b, vit-l, vit-h.")
    group.add_argument("--config_overrides", default=None,
                       help='JSON of S5Config fields, e.g. \'{"hidden_size": 64, "num_hidden_layers": 2}\' (tiny runs).')
    group.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                       help="SyncBatchNorm across processes, as the official runs (GPUs only: PyTorch has no CPU version).")


def config_from_arguments(args: argparse.Namespace, tasks: Sequence[Any], **fields: Any) -> S5Config:
    """A fresh configuration: `--preset` with `--config_overrides` and the given tasks."""
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--config_overrides must be a JSON object, got {args.config_overrides!r}.")
    return S5Config.from_preset(args.preset, tasks=list(tasks), **{**fields, **overrides})


def prepare_training(accelerator: Accelerator, model: torch.nn.Module, args: argparse.Namespace):
    """Gradient checkpointing and SyncBatchNorm as asked, the optimiser and schedule, and `accelerator.prepare`.
    The schedule is stepped once per optimiser step and checkpointed with the state (accelerate's prepared
    schedulers step once per process instead). Returns `(model, optimizer, scheduler)`."""
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.sync_bn and accelerator.num_processes > 1:
        if accelerator.device.type == "cpu":
            logger.warning("SyncBatchNorm needs GPUs; on CPU every process normalises with its own batch statistics.")
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


# ---- optimiser ---------------------------------------------------------------------------------------------------
def _layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for ViT block i, num_layers + 1 for the neck and decoders (BEiT-style)."""
    if ".embeddings." in name or name.startswith("embeddings."):
        return 0
    match = re.search(r"\.layer\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW on every trainable parameter with the same weight decay (the official runs decay all of them); with
    `--layer_decay d` block i's lr is scaled by d ** (num_layers + 1 - (i + 1))."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters.")
    if args.layer_decay is None:
        groups = [{"params": [p for _, p in params]}]
    else:
        num_layers = model.config.num_hidden_layers
        by_layer: dict[int, list] = {}
        for name, p in params:
            by_layer.setdefault(_layer_id(name, num_layers), []).append(p)
        groups = [{"params": ps, "lr": args.learning_rate * args.layer_decay ** (num_layers + 1 - layer)}
                  for layer, ps in sorted(by_layer.items())]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps,
                         num_training_steps=max(args.max_train_steps, 1))


# ---- guards ------------------------------------------------------------------------------------------------------
def check_finite(accelerator: Accelerator, step: int, losses: Mapping[str, torch.Tensor]) -> None:
    """Stop every process with a clear error when any process's loss is NaN or infinite (before any backward, so
    no checkpoint holding the damaged weights is ever written)."""
    bad = torch.tensor([0.0 if torch.isfinite(v.detach()).all() else 1.0 for v in losses.values()],
                       device=accelerator.device)
    if accelerator.reduce(bad, reduction="sum").sum().item() > 0:
        values = {k: float(v.detach()) for k, v in losses.items()}
        raise FloatingPointError(
            f"Step {step}: non-finite loss on at least one process (this process: {values}). Nothing was saved "
            f"after the last checkpoint; lower --learning_rate, set --max_grad_norm, or use --mixed_precision no."
        )


def check_task_classes(config: S5Config, task: str, num_classes: int, source: str) -> None:
    """A dataset whose class count disagrees with the model's head is refused before training starts."""
    head = len(config.tasks[config.task_index(task)]["id2label"])
    if head != num_classes:
        raise ValueError(f"{source}: the data has {num_classes} classes but the model's {task!r} head predicts "
                         f"{head}; build the model with the dataset's label set.")


def check_architecture(saved: S5Config | Mapping, expected: S5Config, what: str) -> None:
    """Refuse a checkpoint built for another architecture or task list, naming the differences."""
    saved = saved if isinstance(saved, Mapping) else saved.to_dict()
    diff = {k: (saved.get(k), getattr(expected, k)) for k in ARCHITECTURE_KEYS if saved.get(k) != getattr(expected, k)}
    saved_tasks = [(t["name"], len(t["id2label"])) for t in saved.get("tasks") or []]
    expected_tasks = [(t["name"], len(t["id2label"])) for t in expected.tasks]
    if saved_tasks != expected_tasks:
        diff["tasks (name, classes)"] = (saved_tasks, expected_tasks)
    if saved.get("model_type") != "s5":
        diff["model_type"] = (saved.get("model_type"), "s5")
    if diff:
        raise ValueError(f"{what} does not match the model this run builds: {diff} (checkpoint, run).")


# ---- checkpoints -------------------------------------------------------------------------------------------------
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if CHECKPOINT.match(p.name)
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def resolve_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("No checkpoint in %s yet: starting from scratch.", output_dir)
        return found[-1] if found else None
    path = Path(value)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json).")
    return path


def save_model_folder(accelerator: Accelerator, model: torch.nn.Module, folder: Path,
                      processor: S5ImageProcessor | None = None) -> None:
    """`save_pretrained` of the unwrapped model (main process), written to a temporary folder and renamed."""
    if accelerator.is_main_process:
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(partial, state_dict=accelerator.get_state_dict(model), safe_serialization=True)
        (processor or S5ImageProcessor()).save_pretrained(partial)
        _replace(partial, folder)
    accelerator.wait_for_everyone()


def _replace(partial: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old)
    else:
        partial.rename(final)


def save_checkpoint(accelerator: Accelerator, model, output_dir: str | os.PathLike, step: int,
                    streams: Mapping[str, Any], state: Mapping[str, Any], keep: int) -> Path:
    final = Path(output_dir) / f"checkpoint-{step:06d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    data_state = {name: stream.state_dict() for name, stream in streams.items()}
    (partial / f"data_state_{accelerator.process_index}.json").write_text(json.dumps(data_state))
    save_model_folder(accelerator, model, partial / "model")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        _replace(partial, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info("Saved checkpoint %s", final)
    return final


def load_checkpoint(accelerator: Accelerator, model, checkpoint: Path, streams: Mapping[str, Any]) -> dict:
    """Restore model, optimiser, scheduler, RNG and stream positions; returns the trainer state."""
    config_file = checkpoint / "model" / "config.json"
    if config_file.is_file():
        check_architecture(json.loads(config_file.read_text()), accelerator.unwrap_model(model).config,
                           f"Checkpoint {checkpoint}")
    data_file = checkpoint / f"data_state_{accelerator.process_index}.json"
    if not data_file.is_file():
        raise FileNotFoundError(f"{data_file} is missing: the checkpoint was written by fewer processes than this "
                                f"run has ({accelerator.num_processes}); resume with the same process count.")
    accelerator.load_state(str(checkpoint))
    data_state = json.loads(data_file.read_text())
    for name, stream in streams.items():
        if name not in data_state:
            raise KeyError(f"Checkpoint {checkpoint} has no position for data stream {name!r} "
                           f"(it has {sorted(data_state)}): the data arguments changed since it was written.")
        stream.load_state_dict(data_state[name])
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    logger.info("Resumed from %s at step %d", checkpoint, state["step"])
    return state


# ---- logs --------------------------------------------------------------------------------------------------------
class MetricsLog:
    """Appends metric records to `<output_dir>/metrics.jsonl` (main process) and draws them as `curves.png`."""

    def __init__(self, accelerator: Accelerator, output_dir: str | os.PathLike):
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"

    def log(self, step: int, values: Mapping[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def records(self, up_to: int | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if up_to is None or r["step"] <= up_to]

    def truncate(self, step: int) -> None:
        """Drop records after `step` (written after the checkpoint a resumed run restarts from)."""
        if self.accelerator.is_main_process and self.path.is_file():
            kept = self.records(up_to=step)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def plot(self, keys: Sequence[str] | None = None) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        rows = self.records()
        # Curves of what changes over training: losses, lr, and each dataset's mIoU once validated twice or more.
        keys = keys or sorted({k for r in rows for k in r if k != "step" and (k.endswith("mIoU") or "/" not in k)
                               and not k.startswith("weight_") and "official" not in k})
        series = {k: [(r["step"], r[k]) for r in rows if k in r and math.isfinite(r[k])] for k in keys}
        series = {k: v for k, v in series.items() if len(v) > 1}
        if not series:
            return None
        return plot_curves(series, Path(self.path).with_name("curves.png"))


def plot_curves(series: Mapping[str, list[tuple[float, float]]], path: Path, panel: tuple[int, int] = (360, 220)) -> Path:
    """One small line chart per series (PIL only: no plotting dependency), in a grid, saved as PNG."""
    width, height = panel
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    canvas = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (name, points) in enumerate(series.items()):
        x0, y0 = (index % columns) * width, (index // columns) * height
        left, top, right, bottom = x0 + 48, y0 + 22, x0 + width - 12, y0 + height - 26
        draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
        xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
        x_lo, x_hi = xs.min(), max(xs.max(), xs.min() + 1)
        y_lo, y_hi = ys.min(), ys.max()
        if y_hi - y_lo < 1e-12:
            y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
        px = left + (xs - x_lo) / (x_hi - x_lo) * (right - left)
        py = bottom - (ys - y_lo) / (y_hi - y_lo) * (bottom - top)
        coords = list(zip(px.tolist(), py.tolist()))
        if len(coords) > 1:
            draw.line(coords, fill=(31, 119, 180), width=2)
        for cx, cy in coords[-1:] if len(coords) > 1 else coords:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=(31, 119, 180))
        draw.text((x0 + 6, y0 + 4), name, fill="black")
        draw.text((x0 + 2, top - 2), f"{y_hi:.3g}", fill=(90, 90, 90))
        draw.text((x0 + 2, bottom - 10), f"{y_lo:.3g}", fill=(90, 90, 90))
        draw.text((left, bottom + 4), f"step {int(x_lo)}", fill=(90, 90, 90))
        draw.text((right - 60, bottom + 4), f"{int(xs.max())}", fill=(90, 90, 90))
    canvas.save(path)
    return path


# ---- the loop ----------------------------------------------------------------------------------------------------
def _reduced_means(accelerator: Accelerator, sums: Mapping[str, float], count: int) -> dict[str, float]:
    if not sums:
        return {}
    values = torch.tensor([sums[k] / max(count, 1) for k in sums], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(sums, values.tolist()))


def sync_buffers(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics). DDP does so at the start of each training
    forward, but after the last one every process has updated its own statistics from its own batch; evaluation
    shards the data across processes, so they must all score with the model that rank 0 saves."""
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)


def run_training(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    args: argparse.Namespace,
    *,
    streams: Mapping[str, Any],
    compute_losses: Callable[[int], tuple[dict[str, torch.Tensor], dict[str, float]]],
    evaluate: Callable[[], dict[str, Any]],
    selection: Callable[[dict[str, Any]], float],
) -> dict[str, Any]:
    """Steps `args.max_train_steps` times: `compute_losses(step)` returns the losses (key "loss" is optimised) and
    extra scalars to log; validates every `eval_steps`, checkpoints every `checkpointing_steps`, resumes exactly.

    Returns {"results": final `evaluate()` results, "best": best selection score, "step": steps done}.
    """
    log = MetricsLog(accelerator, args.output_dir)
    state: dict[str, Any] = {"best": None, "best_step": None}
    start = 0
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, model, checkpoint, streams)
        start = state["step"]
        log.truncate(start)
    if args.max_train_steps < start:
        raise ValueError(f"The checkpoint is at step {start}, beyond --max_train_steps {args.max_train_steps}.")

    def validate(step: int) -> dict[str, Any]:
        sync_buffers(accelerator, model)
        results = evaluate()
        values = {f"{task}/{key}": value for task, result in results.items() for key, value in result.metrics().items()}
        score = selection(results)
        log.log(step, {**values, "selection": score})
        if state["best"] is None or score > state["best"]:
            state["best"], state["best_step"] = score, step
            save_model_folder(accelerator, model, Path(args.output_dir) / "best")
        return results

    sums: dict[str, float] = {}
    count = 0
    bar = tqdm(total=args.max_train_steps, initial=start, desc="train", unit="step",
               disable=not accelerator.is_local_main_process)
    for step in range(start, args.max_train_steps):
        done = step + 1
        model.train()
        losses, scalars = compute_losses(step)
        check_finite(accelerator, done, losses)
        accelerator.backward(losses["loss"])
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in {**{k: float(v.detach()) for k, v in losses.items()}, **scalars}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        bar.update(1)
        if done % args.logging_steps == 0 or done == args.max_train_steps:
            means = _reduced_means(accelerator, sums, count)
            log.log(done, {**means, "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{means['loss']:.4f}")
            sums, count = {}, 0
        if args.eval_steps and done % args.eval_steps == 0 and done < args.max_train_steps:
            validate(done)
        if args.checkpointing_steps and done % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, model, args.output_dir, done, streams,
                            {"best": state["best"], "best_step": state["best_step"]}, args.checkpoints_total_limit)
    bar.close()

    results = validate(args.max_train_steps)
    save_model_folder(accelerator, model, Path(args.output_dir) / "model")
    if accelerator.is_main_process:
        for task, result in results.items():
            save_confusion_matrix_png(result.confusion, None, Path(args.output_dir) / f"confusion_{task}.png",
                                      title=f"{task}: mIoU {100 * result.scores.mean_iou:.2f}")
        log.plot()
        summary = {"step": args.max_train_steps, "best": state["best"], "best_step": state["best_step"],
                   "results": {task: r.metrics() for task, r in results.items()}}
        (Path(args.output_dir) / "results.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return {"results": results, "best": state["best"], "step": args.max_train_steps}


# ---- publishing --------------------------------------------------------------------------------------------------
def push_to_hub(accelerator: Accelerator, args: argparse.Namespace, outcome: Mapping[str, Any], *, stage: str,
                run_summary: str) -> str | None:
    """Publish the run's final model (`<output_dir>/model`) to `--hub_model_id` (default: the output folder's name)
    with a card stating what this run measured. Main process only; returns the commit URL."""
    commit_url = None
    if accelerator.is_main_process:
        repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
        commit_url = _publish(Path(args.output_dir) / "model", repo_id, stage=stage,
                              results=list(outcome["results"].values()), run_summary=run_summary,
                              private=args.hub_private)
        logger.info("Pushed the model to %s", commit_url)
    accelerator.wait_for_everyone()
    return commit_url


def _publish(folder: Path, repo_id: str, *, stage: str, results: Sequence[Any], run_summary: str,
             private: bool) -> str | None:
    from huggingface_hub import EvalResult, constants

    from .hub import publish_model
    from .model_card import DATASETS, build_model_card

    config = S5Config.from_pretrained(folder)
    eval_results = []
    for result in results:
        dataset_id, dataset_name = DATASETS.get(result.task, (result.task, result.task))
        f1 = result.protocol.metric == "mean_f1"
        eval_results.append(EvalResult(
            task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=dataset_id,
            dataset_name=dataset_name, dataset_split="validation", metric_type="f1" if f1 else "mean_iou",
            metric_name="mF1" if f1 else "mIoU", metric_value=round(100 * result.reported, 2),
            # Measured by this run and described in this card: the model's own page is the source.
            source_name="s5-hf training run (validation of this model)", source_url=f"{constants.ENDPOINT}/{repo_id}",
        ))
    card = build_model_card(config, repo_id, stage=stage, eval_results=eval_results, results_intro=run_summary)
    card.save(folder / "README.md")
    return publish_model(folder, repo_id, card=card, private=private)["commit_url"]


__all__ = [
    "MetricsLog", "add_common_arguments", "check_architecture", "check_finite", "check_task_classes",
    "list_checkpoints", "load_checkpoint", "make_accelerator", "make_optimizer", "make_scheduler", "plot_curves",
    "push_to_hub", "resolve_checkpoint", "run_training", "add_model_arguments", "config_from_arguments", "prepare_training", "save_checkpoint", "save_model_folder",
]
