"""What the two training programs (`s5_hf.training.s4p`, `s5_hf.training.mdf`) share.

The run setup (`make_accelerator`, from the typed `s5_hf.training.arguments`), the optimiser (AdamW, optional
layer-wise lr decay) and cosine schedule, gradient accumulation, crash-safe checkpoints with exact resume, the NaN
guard, the metrics log (JSON lines + a PNG of the curves, and accelerate's experiment trackers with `--report_to`)
and publishing to the Hub. Each stage's step (data and losses) stays in its module, in the style of transformers'
`examples/pytorch/*_no_trainer.py`.

Output folder: one run per folder. `.s5-manifest.json` records the run (id, program, arguments) and what it
wrote; a non-empty folder of another run (or of anything else) is refused, unless `--resume_from_checkpoint`
continues the run it holds or `--overwrite_output_dir` replaces it (deleting only what that run wrote), as in
transformers.

Checkpoint folder (`<output_dir>/checkpoint-<step>/`), written under a hidden `.partial` name and swapped in when
complete (`s5_hf.files`), so a kill never leaves a half-written checkpoint that `--resume_from_checkpoint latest`
would pick:

    accelerate state (model, optimizer, scheduler, scaler, RNG of every process)
    data_state_<rank>.json      position of every data stream of that process
    trainer_state.json          step, best score
    model/                      `save_pretrained` folder (safetensors, config, processor, code)
    integrity.json              sha256 of every other file (written last)

Resuming runs `accelerator.load_state`, which unpickles the optimizer, scheduler and RNG files
(`torch.load(weights_only=False)`): unpickling can run arbitrary code, so resume only from checkpoints you trust
(your own runs). The integrity record guards against damaged or edited files, not against a malicious
checkpoint: a folder whose files differ from the record, or lack one, is refused.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from transformers import get_scheduler

from .. import files
from ..configuration_s5 import S5Config
from ..image_processing_s5 import S5ImageProcessor
from ..evaluation.metrics import save_confusion_matrix_png
from ..heap import configure_cpu_memory
from ..precision import check_accelerate_precision
from ..visualize import line_chart, save_png

logger = get_logger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RUN_KIND = "s5-hf training run"
INTEGRITY_NAME = "integrity.json"
TRACKER_FOLDER = "trackers"


@dataclass(frozen=True)
class Session:
    """What `make_accelerator` sets up for one run: the Accelerator, the claimed output folder, and the values it
    resolved (the arguments themselves are never changed): the mixed precision that actually runs, the
    checkpoint interval, and the experiment trackers."""

    accelerator: Accelerator
    run_folder: RunFolder
    mixed_precision: str
    checkpointing_steps: int
    trackers: tuple = ()


def trackers_for(report_to: str) -> list:
    """accelerate trackers of `--report_to`: none, all (every installed one), or one name; a named tracker whose
    package is missing is an error naming the package (accelerate would silently drop it)."""
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "trackio": is_trackio_available, "wandb": is_wandb_available}
    if report_to in (None, "none"):
        return []
    if report_to == "all":
        found = [name for name, check in available.items() if check()]
        if not found:
            logger.warning("--report_to all: none of %s is installed; only metrics.jsonl is written.",
                           ", ".join(available))
        return found
    if report_to not in available:
        raise ValueError(f"--report_to {report_to!r}: choose none, all, {', '.join(available)}.")
    if not available[report_to]():
        package = '"s5-hf[tracking]"' if report_to == "tensorboard" else report_to
        raise ImportError(f"--report_to {report_to} needs the {report_to} package, which is not installed: "
                          f"pip install {package}, or pass --report_to none.")
    return [report_to]


def make_accelerator(training, arguments: Mapping[str, Any]) -> Session:
    """The Accelerator, with the output folder checked (see `RunFolder`) and claimed for this run.

    `training` is the run's `RunArguments`; `arguments` the flat record of every option (kept in the folder's
    manifest and given to the trackers). Returns a `Session`; `training` is not changed."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # `accelerate launch --multi_gpu` on a machine without CUDA starts processes that each see a single-process
    # state (two rank 0s); asking for the CPU backend makes them one gloo process group.
    # bf16/fp16 where the device does not run them natively (e.g. bf16 on a CPU without AVX-512 BF16 or AMX, ~500x
    # slower) falls back to fp32 with a warning quoting the measured factor; the manifest records what ran.
    mixed_precision = check_accelerate_precision(training.mixed_precision)
    trackers = trackers_for(getattr(training, "report_to", "none"))
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=launched > 1 and not torch.cuda.is_available(),
                              gradient_accumulation_steps=getattr(training, "gradient_accumulation_steps", 1),
                              log_with=trackers or None,
                              project_dir=str(Path(training.output_dir) / TRACKER_FOLDER) if trackers else None)
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate formed a group of "
            f"{accelerator.num_processes}: every process would act as rank 0. On CPU, start them with "
            "`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N ...`.")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.device.type == "cpu":
        configure_cpu_memory()
    record = {**arguments, "mixed_precision": mixed_precision}
    if hasattr(training, "checkpointing_mode"):  # what runs, also when the default applies
        record["activation_checkpointing"] = training.checkpointing_mode()
    run_folder = RunFolder.open(accelerator, training.output_dir, arguments=record,
                                resume_from_checkpoint=training.resume_from_checkpoint,
                                overwrite=training.overwrite_output_dir)
    return Session(accelerator, run_folder, mixed_precision, training.resolved_checkpointing_steps(),
                   tuple(trackers))


def start_trackers(session: Session, project: str, arguments: Mapping[str, Any]) -> None:
    """Start the experiment trackers (main process), with the run's options as their configuration. Local logs
    (tensorboard) go to `<output_dir>/trackers/<project>`, an entry of the run's manifest."""
    accelerator = session.accelerator
    if not accelerator.log_with:
        return
    if accelerator.is_main_process and "tensorboard" in session.trackers:  # the one that writes into the folder
        session.run_folder.claim(TRACKER_FOLDER)
    # Trackers take scalars and strings: lists and mappings are given as JSON.
    config = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
              for k, v in _jsonable(arguments).items() if v is not None}
    accelerator.init_trackers(project, config=config)


class RunFolder:
    """The output folder of one training run and its manifest (`s5_hf.files`): what this run wrote (top-level
    entries), its id, program and arguments. `open` refuses folders of anything else, so rotation and
    `--overwrite_output_dir` only ever delete this program's files."""

    def __init__(self, accelerator: Accelerator, path: Path, manifest: dict):
        self.accelerator, self.path, self.manifest = accelerator, path, manifest

    @classmethod
    def open(cls, accelerator: Accelerator, output_dir: str | os.PathLike, *, arguments: Mapping[str, Any],
             resume_from_checkpoint: str | None = None, overwrite: bool = False) -> RunFolder:
        """Check (every process) and open the folder; `arguments` is the run's option record for the manifest."""
        path = Path(output_dir)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"--output_dir {path} is a file, not a folder.")
        # Every process checks (read only), so that all of them stop with the same error.
        entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        visible = [name for name in entries if not name.startswith(".")]
        manifest = files.read_manifest(path) if entries else None
        if manifest is not None and manifest.get("kind") != RUN_KIND:
            raise FileExistsError(f"--output_dir {path} holds {manifest.get('kind')!r} output, not a training run; "
                                  "choose an empty or new folder.")
        if manifest is None and visible:
            raise FileExistsError(
                f"--output_dir {path} is not empty ({', '.join(visible[:5])}{', ...' if len(visible) > 5 else ''}) "
                "and holds no s5-hf training run; choose an empty or new folder.")
        previous = None
        if manifest is not None and resume_from_checkpoint is None:
            if not overwrite:
                raise FileExistsError(
                    f"--output_dir {path} holds the training run {manifest.get('run_id')} of "
                    f"{manifest.get('program')} (started {manifest.get('started')}): pass --resume_from_checkpoint "
                    "latest to continue it, --overwrite_output_dir to replace it, or choose another folder.")
            previous, manifest = manifest, None
        session = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "program": Path(sys.argv[0]).name, "arguments": _jsonable(arguments),
                   "processes": accelerator.num_processes}
        if manifest is None:
            manifest = {"kind": RUN_KIND, "files": [], "entries": [], "run_id": uuid.uuid4().hex[:12],
                        "program": session["program"], "started": session["started"], "sessions": []}
        # Every process must use rank 0's id and entries.
        if accelerator.num_processes > 1:
            shared = [manifest]
            torch.distributed.broadcast_object_list(shared, src=0)
            manifest = shared[0]
        manifest["sessions"] = [*manifest.get("sessions", []), session]
        folder = cls(accelerator, path, manifest)
        if accelerator.is_main_process:
            if previous is not None:
                logger.warning("--overwrite_output_dir: deleting what run %s wrote into %s.",
                               previous.get("run_id"), path)
                for name in previous.get("entries", []):
                    folder._delete(name)
                files.write_json(path / files.MANIFEST_NAME, {**previous, "entries": [], "files": []}, indent=2)
            for stale in [*path.glob(".checkpoint-*.partial"), *path.glob("checkpoint-*.partial")]:
                logger.warning("Removing %s, a checkpoint an interrupted run did not finish writing.", stale)
                shutil.rmtree(stale)
        accelerator.wait_for_everyone()
        # Nothing else is written until the run writes its first output (`claim`): a run that fails on its first
        # batch (bad data, bad labels) leaves the folder as it was.
        return folder

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def _delete(self, name: str) -> None:
        target = self.path / name
        files.recover_directory(target)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def _write(self) -> None:
        entries = sorted(set(self.manifest["entries"]))
        listed = []
        for name in entries:
            entry = self.path / name
            found = sorted(entry.rglob("*")) if entry.is_dir() else [entry]
            listed += [p.relative_to(self.path).as_posix() for p in found if p.is_file()]
        self.manifest.update(entries=entries, files=listed)
        files.write_json(self.path / files.MANIFEST_NAME, self.manifest, indent=2)

    def claim(self, *names: str) -> None:
        """Record top-level entries this run is about to write, or wrote (main process). The manifest is written
        before the first of them exists, so a killed run's folder is always recognised as this run's."""
        if self.accelerator.is_main_process:
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest["entries"] = sorted(set(self.manifest["entries"]) | set(names))
            self._write()

    def remove(self, name: str) -> None:
        """Delete an entry this run wrote (main process); anything it did not write is never touched."""
        if name not in self.manifest["entries"]:
            raise RuntimeError(f"Refusing to delete {self.path / name}: this run's manifest does not list it.")
        self._delete(name)
        self.manifest["entries"] = [e for e in self.manifest["entries"] if e != name]
        self._write()


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        try:
            json.dumps(value, allow_nan=False)
            out[key] = value
        except (TypeError, ValueError):
            out[key] = repr(value)
    return out


def config_from_arguments(model_arguments, tasks: Sequence[Any], **fields: Any) -> S5Config:
    """A fresh configuration: `--preset` with `--config_overrides` and the given tasks (`model_arguments`:
    `ModelArguments`)."""
    return S5Config.from_preset(model_arguments.preset, tasks=list(tasks),
                                **{**fields, **model_arguments.overrides()})


def prepare_training(accelerator: Accelerator, model: torch.nn.Module, args):
    """Gradient checkpointing, SyncBatchNorm and torch.compile as asked, the optimiser and schedule, and
    `accelerator.prepare`. The schedule is stepped once per optimiser step and checkpointed with the state
    (accelerate's prepared schedulers step once per process instead). Returns `(model, optimizer, scheduler)`."""
    if args.checkpointing_mode() != "none":
        model.set_activation_checkpointing(args.checkpointing_mode())
    if args.sync_bn and accelerator.num_processes > 1:
        if accelerator.device.type == "cpu":
            logger.warning("SyncBatchNorm needs GPUs; on CPU every process normalises with its own batch statistics.")
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if getattr(args, "torch_compile", False):
        if accelerator.device.type == "cpu":
            logger.warning("--torch_compile on CPU: the ViT-B training step measured x0.95 of eager after minutes of "
                           "compilation (benchmarks/bench_compile.py); it pays off on GPUs.")
        # In place (nn.Module.compile): the module, its parameter names and saved folders stay those of the model.
        model.compile(backend=args.torch_compile_backend)
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


def make_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
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
                             weight_decay=args.weight_decay, fused=fused_adamw_supported(p for _, p in params))


def fused_adamw_supported(params) -> bool:
    """Whether AdamW's fused kernel takes these parameters (floating point, on CPU or CUDA). It updates each tensor in
    one pass: on CPU the ViT-B MDF step's update took 0.08 s instead of the multi-tensor path's 0.44 s, without that
    path's whole-model temporaries; the updates agree to rounding (3e-8 after 20 steps)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_scheduler(optimizer: torch.optim.Optimizer, args):
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
    head = config.get_task(task).num_labels
    if head != num_classes:
        raise ValueError(f"{source}: the data has {num_classes} classes but the model's {task!r} head predicts "
                         f"{head}; build the model with the dataset's label set.")


def check_architecture(saved: S5Config | Mapping, expected: S5Config, what: str) -> None:
    """Refuse a checkpoint built for another architecture or task list, naming the differences
    (`S5Config.architecture_differences`, the one definition of "the same model")."""
    model_type = saved.get("model_type") if isinstance(saved, Mapping) else saved.model_type
    if model_type != "s5":
        diff = {"model_type": (model_type, "s5")}
    else:
        diff = {k: (theirs, ours) for k, (ours, theirs) in expected.architecture_differences(saved).items()}
    if diff:
        raise ValueError(f"{what} does not match the model this run builds: {diff} (checkpoint, run).")


# ---- checkpoints -------------------------------------------------------------------------------------------------
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if CHECKPOINT.match(p.name) and p.is_dir()]
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
    """`save_pretrained` of the unwrapped model (main process) into a staged folder swapped in atomically."""
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        state_dict = accelerator.get_state_dict(model)
        with files.staged_directory(folder) as staging:
            unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
            (processor or S5ImageProcessor()).save_pretrained(staging)
    accelerator.wait_for_everyone()




def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != INTEGRITY_NAME)


def write_integrity_record(folder: Path) -> None:
    """sha256 of every file of a checkpoint folder, written last (and atomically) as `integrity.json`."""
    record = {"algorithm": "sha256",
              "files": {name: files.sha256_file(folder / name) for name in _checkpoint_files(folder)}}
    files.write_json(folder / INTEGRITY_NAME, record, indent=1)


def verify_checkpoint(folder: Path) -> None:
    """Refuse a checkpoint folder whose files are not exactly those of its integrity record, naming them."""
    record_path = folder / INTEGRITY_NAME
    if not record_path.is_file():
        raise ValueError(f"Checkpoint {folder} has no {INTEGRITY_NAME}: it was not written (completely) by this "
                         "version of s5-hf; refusing to resume from it.")
    try:
        recorded = json.loads(record_path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Checkpoint {folder}: {record_path.name} is unreadable ({error}).") from None
    present = _checkpoint_files(folder)
    problems = [f"missing {name}" for name in sorted(set(recorded) - set(present))]
    problems += [f"extra {name}" for name in present if name not in recorded]
    problems += [f"changed {name}" for name in present
                 if name in recorded and files.sha256_file(folder / name) != recorded[name]]
    if problems:
        raise ValueError(f"Checkpoint {folder} fails its integrity check ({'; '.join(problems[:10])}): it was "
                         "damaged or edited after it was written; refusing to resume from it.")


def save_checkpoint(accelerator: Accelerator, model, output_dir: str | os.PathLike, step: int,
                    streams: Mapping[str, Any], state: Mapping[str, Any], keep: int,
                    run_folder: RunFolder | None = None) -> Path:
    """Write `checkpoint-<step>` (every process writes its part into a hidden staging folder; rank 0 adds the
    integrity record and swaps the folder in), then delete this run's older checkpoints beyond `keep` and any
    of a later step (left by the trajectory a resumed run abandoned)."""
    final = Path(output_dir) / f"checkpoint-{step:06d}"
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        if run_folder is not None:
            run_folder.claim(final.name)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    data_state = {name: stream.state_dict() for name, stream in streams.items()}
    files.write_json(partial / f"data_state_{accelerator.process_index}.json", data_state)
    save_model_folder(accelerator, model, partial / "model")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {**state, "best": None if state.get("best") is None else _finite_or_none(state["best"])}
        files.write_json(partial / "trainer_state.json", {**state, "step": step}, indent=2)
        write_integrity_record(partial)
        files.replace_directory(partial, final)
        if run_folder is not None:
            run_folder.claim()  # lists the checkpoint's files
        found = list_checkpoints(output_dir)
        later = [p for p in found if int(CHECKPOINT.match(p.name).group(1)) > step]
        earlier = [p for p in found if int(CHECKPOINT.match(p.name).group(1)) < step]
        stale = later + (earlier[: max(len(earlier) - (keep - 1), 0)] if keep > 0 else [])
        for old in stale:
            if run_folder is not None:
                run_folder.remove(old.name)
            else:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info("Saved checkpoint %s", final)
    return final


def load_checkpoint(accelerator: Accelerator, model, checkpoint: Path, streams: Mapping[str, Any]) -> dict:
    """Restore model, optimiser, scheduler, RNG and stream positions; returns the trainer state.

    The checkpoint must be trusted: `accelerator.load_state` unpickles its state files. Its integrity record
    is checked first (every process), so a damaged or edited folder is refused before anything is read."""
    verify_checkpoint(checkpoint)
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
    """Appends metric records to `<output_dir>/metrics.jsonl` (main process), gives them to the experiment trackers
    of `--report_to` (accelerate's `log`), and draws them as `curves.png`."""

    def __init__(self, accelerator: Accelerator, output_dir: str | os.PathLike, run_folder: RunFolder | None = None):
        self.accelerator, self.run_folder = accelerator, run_folder
        self.path = Path(output_dir) / "metrics.jsonl"

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Append one record (an fsync'd line); a value that is not finite is written as null (JSON has no NaN)."""
        record = {"step": step, **{k: _finite_or_none(v) for k, v in values.items()}}
        if self.accelerator.is_main_process:
            if self.run_folder is not None and self.path.name not in self.run_folder.manifest["entries"]:
                self.run_folder.claim(self.path.name)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            files.append_line(self.path, json.dumps(record, allow_nan=False))
        if getattr(self.accelerator, "trackers", None):  # --report_to: the same finite values
            self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
        logger.info("step %d: %s", step, ", ".join(f"{k}={float(v):.4g}" for k, v in values.items()))

    def records(self, up_to: int | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if up_to is None or r["step"] <= up_to]

    def truncate(self, step: int) -> None:
        """Drop records after `step` (written after the checkpoint a resumed run restarts from)."""
        if self.accelerator.is_main_process and self.path.is_file():
            kept = self.records(up_to=step)
            files.write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))

    def plot(self, keys: Sequence[str] | None = None) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        rows = self.records()
        # Curves of what changes over training: losses, lr, and each dataset's mIoU once validated twice or more.
        keys = keys or sorted({k for r in rows for k in r if k != "step" and (k.endswith("mIoU") or "/" not in k)
                               and not k.startswith(("weight_", "valid_share_")) and "official" not in k})
        series = {k: [(r["step"], r[k]) for r in rows if r.get(k) is not None] for k in keys}
        series = {k: v for k, v in series.items() if len(v) > 1}
        if not series:
            return None
        return plot_curves(series, Path(self.path).with_name("curves.png"))


def plot_curves(series: Mapping[str, list[tuple[float, float]]], path: Path, panel: tuple[int, int] = (360, 220)) -> Path:
    """One small line chart per series, in a grid, saved as PNG (`s5_hf.visualize.line_chart`)."""
    return save_png(line_chart(series, panel), path)


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


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


class VoidGuard:
    """Training on batches without a valid pixel trains nothing: warn when a stream's batch (over all processes)
    holds almost no valid pixel, and stop when one has had none for `max_steps` steps in a row."""

    WARN_BELOW = 0.01

    def __init__(self, accelerator: Accelerator, max_steps: int):
        self.accelerator, self.max_steps = accelerator, max_steps
        self.empty_since: dict[str, int] = {}
        self.warned: set[str] = set()

    def update(self, step: int, shares: Mapping[str, float]) -> None:
        if not shares:
            return
        names = sorted(shares)
        values = torch.tensor([float(shares[n]) for n in names], dtype=torch.float64, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean").tolist()
        for name, share in zip(names, values):
            if share < self.WARN_BELOW and name not in self.warned:
                self.warned.add(name)
                logger.warning(
                    "Step %d: only %.3g%% of the %s batch's pixels are valid (labelled, not padding); check the "
                    "readers' patch_size against the tile and crop sizes.", step, 100 * share, name)
            if share > 0:
                self.empty_since.pop(name, None)
                continue
            first = self.empty_since.setdefault(name, step)
            if self.max_steps and step - first + 1 >= self.max_steps:
                raise ValueError(
                    f"Steps {first}-{step}: the {name} batches held no valid pixel ({step - first + 1} steps in a "
                    f"row, --max_void_steps {self.max_steps}), so that loss trains nothing. Every pixel was void "
                    "(255, e.g. padding) or the ignore index: small tiles cut into larger patches are mostly "
                    "padding; set the readers' patch_size/stride (--reader_options / --labeled_options) or "
                    "--crop_size to the data's size.")


@dataclass
class MicroBatch:
    """One micro-batch of a training step: its tensors (any structure `compute_losses` takes) and, per loss term,
    the number of pixels that term averages over (valid pixels: neither void nor the ignore index)."""

    data: Any
    pixels: Mapping[str, int] = field(default_factory=dict)


def accumulation_fractions(micro_batches: Sequence[MicroBatch]) -> list[dict[str, float]]:
    """Each micro-batch's share of every loss term's pixels over the whole accumulated batch.

    A loss term is a mean over valid pixels. The mean over an accumulated batch is the sum of each micro-batch's
    mean weighted by its share of the pixels (not 1/N each, which weighs a micro-batch with few valid pixels, e.g.
    much padding, as much as a full one): with these weights N accumulated micro-batches give the gradient of one
    N times larger batch. A term without a valid pixel in the whole batch gets 0."""
    terms = sorted({term for batch in micro_batches for term in batch.pixels})
    totals = {term: sum(int(batch.pixels.get(term, 0)) for batch in micro_batches) for term in terms}
    return [{term: int(batch.pixels.get(term, 0)) / totals[term] if totals[term] else 0.0 for term in terms}
            for batch in micro_batches]


def run_training(
    session: Session,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    args,
    *,
    streams: Mapping[str, Any],
    draw: Callable[[], MicroBatch],
    compute_losses: Callable[[Any, int, Mapping[str, float]], tuple[dict[str, torch.Tensor], dict[str, float]]],
    evaluate: Callable[[], dict[str, Any]],
    selection: Callable[[dict[str, Any]], float],
    test: Callable[[], dict[str, Any]] | None = None,
    image_processor: S5ImageProcessor | None = None,
) -> dict[str, Any]:
    """Steps `args.max_train_steps` optimizer steps (`args`: the run's `RunArguments`). Each step draws
    `args.gradient_accumulation_steps` micro-batches (`draw()`), then for each, inside `accelerator.accumulate`,
    `compute_losses(data, step, fractions)` returns the losses and extra scalars to log; "loss" is optimised and
    must already weigh each term by the micro-batch's `fractions[term]` (`accumulation_fractions`; all 1 without
    accumulation), so that the summed micro-batch losses are the accumulated batch's loss. Logged per step: the
    losses summed over the micro-batches, the scalars averaged (`valid_share_<stream>`: the share of valid pixels of
    its batch, watched by `VoidGuard`).

    Exactness of accumulation: N micro-batches of B give the update of one batch of N x B when nothing in the model
    depends on the batch composition: BatchNorm normalises with each micro-batch's own statistics in training
    mode (as each process does under DDP without SyncBatchNorm), and dropout draws differ, so with those layers
    active the updates are close, not equal. Across processes the gradients are averaged as usual (DDP).

    Validates with `evaluate()` every `eval_steps` (the best `selection` score's model is kept in `best/`),
    checkpoints every `session.checkpointing_steps`, resumes exactly. At the end, `test()` scores the final model on
    the splits a benchmark reports where they differ from the model-selection split. `image_processor` is saved
    with every model folder (default: the 8-bit RGB one).

    Returns {"results": the final model's reported results per task (test where `test` scored the task, else the
    final validation), "validation": its final validation results, "best", "best_step", "step"}. Every result
    carries its split, sample count and cap (`TaskResult.describe`); `results.json` holds the same facts.
    """
    accelerator, run_folder = session.accelerator, session.run_folder
    claim = run_folder.claim if run_folder is not None else (lambda *names: None)
    log = MetricsLog(accelerator, args.output_dir, run_folder)
    state: dict[str, Any] = {"best": None, "best_step": None}
    start = 0
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, model, checkpoint, streams)
        start = state["step"]
        log.truncate(start)
    elif args.resume_from_checkpoint is not None:
        log.truncate(0)  # `latest` of a run killed before its first checkpoint: start the log afresh too
    if args.max_train_steps < start:
        raise ValueError(f"The checkpoint is at step {start}, beyond --max_train_steps {args.max_train_steps}.")
    void_guard = VoidGuard(accelerator, getattr(args, "max_void_steps", 0) or 0)
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    checkpointing_steps = session.checkpointing_steps

    def validate(step: int) -> dict[str, Any]:
        sync_buffers(accelerator, model)
        results = evaluate()
        values = {f"{task}/{key}": value for task, result in results.items() for key, value in result.metrics().items()}
        score = selection(results)
        log.log(step, {**values, "selection": score})
        if state["best"] is None or score > state["best"]:
            state["best"], state["best_step"] = score, step
            claim("best")
            save_model_folder(accelerator, model, Path(args.output_dir) / "best", image_processor)
            claim()
        return results

    sums: dict[str, float] = {}
    count = 0
    bar = tqdm(total=args.max_train_steps, initial=start, desc="train", unit="step",
               disable=not accelerator.is_local_main_process)
    for step in range(start, args.max_train_steps):
        done = step + 1
        model.train()
        micro_batches = [draw() for _ in range(accumulation)]
        step_losses: dict[str, float] = {}
        step_scalars: dict[str, float] = {}
        for batch, fractions in zip(micro_batches, accumulation_fractions(micro_batches)):
            with accelerator.accumulate(model):
                losses, scalars = compute_losses(batch.data, step, fractions)
                check_finite(accelerator, done, losses)
                # accelerate divides the loss by the accumulation steps (equal weights); ours are already weighted
                # by each micro-batch's share of the pixels.
                accelerator.backward(losses["loss"] * accumulation)
            for key, value in losses.items():
                step_losses[key] = step_losses.get(key, 0.0) + float(value.detach())
            for key, value in scalars.items():
                step_scalars[key] = step_scalars.get(key, 0.0) + float(value) / accumulation
        if not accelerator.sync_gradients:
            raise RuntimeError(f"Step {done}: accelerate did not synchronise the gradients after {accumulation} "
                               "micro-batches; its accumulation counter is out of step with this loop.")
        void_guard.update(done, {k.removeprefix("valid_share_"): v for k, v in step_scalars.items()
                                 if k.startswith("valid_share_")})
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in {**step_losses, **step_scalars}.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        bar.update(1)
        if done % args.logging_steps == 0 or done == args.max_train_steps:
            means = _reduced_means(accelerator, sums, count)
            log.log(done, {**means, "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{means['loss']:.4f}")
            sums, count = {}, 0
        if args.eval_steps and done % args.eval_steps == 0 and done < args.max_train_steps:
            validate(done)
        if checkpointing_steps and done % checkpointing_steps == 0:
            save_checkpoint(accelerator, model, args.output_dir, done, streams,
                            {"best": state["best"], "best_step": state["best_step"]}, args.checkpoints_total_limit,
                            run_folder)
    bar.close()

    validation = validate(args.max_train_steps)
    claim("model")
    save_model_folder(accelerator, model, Path(args.output_dir) / "model", image_processor)
    results = {**validation, **(test() if test is not None else {})}
    if accelerator.is_main_process:
        output = Path(args.output_dir)
        claim("results.json", "curves.png", *(f"confusion_{task}.png" for task in results))
        for task, result in results.items():
            save_confusion_matrix_png(result.confusion, None, output / f"confusion_{task}.png",
                                      title=f"{task} ({result.split}): mIoU {100 * result.scores.mean_iou:.2f}")
        written = [f"confusion_{task}.png" for task in results]
        if log.plot() is not None:
            written.append("curves.png")
        best = None if state["best"] is None else _finite_or_none(state["best"])
        summary = {"run_id": run_folder.run_id if run_folder is not None else None, "step": args.max_train_steps,
                   "best": best, "best_step": state["best_step"],
                   "results": {task: r.describe() for task, r in results.items()},
                   "validation": {task: r.describe() for task, r in validation.items()}}
        files.write_json(output / "results.json", summary, indent=2)
        claim()
    accelerator.wait_for_everyone()
    return {"results": results, "validation": validation, "best": state["best"], "best_step": state["best_step"],
            "step": args.max_train_steps}


# ---- publishing --------------------------------------------------------------------------------------------------
def push_to_hub(accelerator: Accelerator, args, outcome: Mapping[str, Any], *, stage: str,
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


def _evaluation_scope(result: Any, split: str) -> str:
    """"test split, 4 images, capped at 2 per process by --max_eval_samples": what a reported score measured."""
    text = f"{split} split"
    if getattr(result, "num_samples", None) is not None:
        text += f", {result.num_samples} images"
    if getattr(result, "max_samples", None):
        text += f", capped at {result.max_samples} per process by --max_eval_samples (not the whole split)"
    return text


def _publish(folder: Path, repo_id: str, *, stage: str, results: Sequence[Any], run_summary: str,
             private: bool) -> str | None:
    from ..hub.cards import DATASETS, build_model_card, measured_eval_result
    from ..hub.publish import LORA_FOLDER, PublishError, publish_model

    config = S5Config.from_pretrained(folder)
    # A --lora run's results were measured with its adapters (folder/lora/<task>/): they are published with the
    # model and the card says how to load them. Adapters only beside the folder would be silently left behind.
    adapters = sorted(p.name for p in (folder / LORA_FOLDER).iterdir() if p.is_dir()) \
        if (folder / LORA_FOLDER).is_dir() else []
    if not adapters and (folder.parent / LORA_FOLDER).is_dir():
        raise PublishError(f"{folder.parent / LORA_FOLDER} holds LoRA adapters but {folder} has none: the model "
                           f"would be published without the adapters its results were measured with.")
    eval_results, scopes = [], []
    for result in results:
        split = getattr(result, "split", None) or "validation"  # run_training reports test splits where scored
        scope = _evaluation_scope(result, split)
        scopes.append(f"{DATASETS.get(result.task, (result.task, result.task))[1]}: {scope}")
        eval_results.append(measured_eval_result(result.task, result.reported, repo_id, scope, split=split))
    # A capped evaluation (--max_eval_samples) scores part of the split: the card says which part was scored.
    intro = run_summary + ("\n\nScored on: " + "; ".join(scopes) + "." if scopes else "")
    card = build_model_card(config, repo_id, stage=stage, eval_results=eval_results, results_intro=intro,
                            lora_adapters=adapters)
    card.save(folder / "README.md")
    return publish_model(folder, repo_id, card=card, private=private)["commit_url"]


__all__ = [
    "INTEGRITY_NAME", "MetricsLog", "MicroBatch", "RunFolder", "Session", "VoidGuard", "accumulation_fractions",
    "check_architecture", "check_finite", "check_task_classes", "config_from_arguments", "fused_adamw_supported",
    "list_checkpoints", "load_checkpoint", "make_accelerator", "make_optimizer", "make_scheduler", "plot_curves",
    "prepare_training",
    "push_to_hub", "resolve_checkpoint", "run_training", "save_checkpoint", "save_model_folder", "start_trackers",
    "trackers_for", "verify_checkpoint", "write_integrity_record",
]
