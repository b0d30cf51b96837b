"""Deployment export: one dataset's head of an S5 model as an ONNX graph, run with onnxruntime.

    python -m s5_hf.inference.export runs/mdf-vit-b/model out/potsdam.onnx --task potsdam     # 512 px windows, any batch

A multi-task (MoE-MDF) model is first reduced to a plain single-task model (`extract_task`: the task's expert
folded into the FFN), so the graph has no routing. The graph takes `pixel_values` (batch, bands, H, W) float32,
normalised as `S5ImageProcessor` does, with a dynamic batch and the fixed window size it was exported at (the
position embeddings are resampled to that size once, at export), and returns `logits` (batch, classes, H, W).
After writing, the export runs onnxruntime on a random batch and checks the logits against PyTorch (max abs
difference <= `atol`, 1e-4 by default); a larger difference is an error and nothing is written.

The task name, its labels and the window size are stored in the ONNX metadata (`OnnxSegmenter.metadata`).
Needs the `export` extra: `pip install "s5-hf[export]"` (onnx, onnxscript for torch's exporter, onnxruntime).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cli import ArgumentParser
from ..files import fsync_directory, fsync_file, temporary_sibling
from ..modeling_s5 import S5ForSemanticSegmentation, TaskRouting, stages_to_maps

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"


class ExportError(RuntimeError):
    """The export failed or its graph does not reproduce the PyTorch logits."""


class _WholeBatch(TaskRouting):
    """Routing of a single-task model: every row to task 0. Built without `torch.unique`, whose data-dependent
    result `torch.export` cannot trace; a single-task model has no experts, so the routing is never applied."""

    def __init__(self):  # noqa: D107 - deliberately skips TaskRouting.__init__
        self.task_ids = None
        self.groups = [(0, None)]


class SingleTaskLogits(nn.Module):
    """`pixel_values -> logits` of a single-task `S5ForSemanticSegmentation`, in a form `torch.export` traces.

    It calls the model's own submodules in the order of `S5ForSemanticSegmentation.forward` for one task; the
    export checks its result against that forward, so a divergence cannot pass silently.
    """

    def __init__(self, model: S5ForSemanticSegmentation):
        super().__init__()
        if len(model.config.tasks) != 1:
            raise ValueError(f"SingleTaskLogits needs a single-task model, got tasks {model.config.task_names}: "
                             f"use model.extract_task(name) first.")
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model, config = self.model, self.model.config
        embeddings, grid = model.s5.embeddings(pixel_values)
        stages = model.s5.encoder(embeddings, _WholeBatch(), config.out_indices).stages
        return model._upsample(model._decode(0, stages_to_maps(stages, grid)), pixel_values.shape[-2:])


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(f"ONNX export needs {module!r}: pip install \"s5-hf[export]\" "
                          f"(onnx, onnxscript, onnxruntime).") from error


def single_task_model(model: S5ForSemanticSegmentation, task: str | None) -> S5ForSemanticSegmentation:
    """`model` itself when it has one task (which must match `task`, if given), else `model.extract_task(task)`."""
    names = model.config.task_names
    if len(names) == 1:
        if task is not None and task != names[0]:
            raise ValueError(f"This model has the single task {names[0]!r}, not {task!r}.")
        return model
    if task is None:
        raise ValueError(f"This model has tasks {names}: choose one with task=... (--task).")
    if task not in names:
        raise ValueError(f"Unknown task {task!r}: this model has tasks {names}.")
    return model.extract_task(task)


def export_onnx(
    model: S5ForSemanticSegmentation,
    path: str | os.PathLike,
    *,
    task: str | None = None,
    image_size: int | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write one task of `model` as an ONNX graph at `path` (see the module docstring); returns `path`.

    Args:
        model: a single-task model, or a multi-task one together with `task`.
        image_size: the window size (H = W) the graph takes; default `config.image_size`. A multiple of the patch
            size.
        dynamic_batch: any batch size (otherwise only batch 1).
        verify: run the written graph with onnxruntime and compare its logits with PyTorch (`atol`).
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the output file must end in .onnx.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: the output folder does not exist.")
    single = single_task_model(model, task)
    config = single.config
    size = image_size if image_size is not None else config.image_size
    if size <= 0 or size % config.patch_size:
        raise ValueError(f"image_size must be a positive multiple of the patch size {config.patch_size}, got {size}.")
    for module in ("onnx", "onnxscript") + (("onnxruntime",) if verify else ()):
        _require(module)

    if single.dtype != torch.float32 or single.device.type != "cpu":  # export in fp32 on CPU; leave `model` as is
        single = copy.deepcopy(single).float().cpu()
    program = _export_program(single, size, dynamic_batch, opset_version)
    _write_checked(program, path, single, size=size, batch=2 if dynamic_batch else 1, verify=verify, atol=atol)
    return path


def _export_program(single: S5ForSemanticSegmentation, size: int, dynamic_batch: bool, opset_version: int | None):
    """The ONNX program (torch's dynamo exporter) of a single-task fp32 CPU model, with the task in its metadata."""
    config = single.config
    was_training = single.training
    graph = SingleTaskLogits(single.eval()).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2 if dynamic_batch else 1, config.num_channels, size, size, generator=generator)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        with torch.no_grad():
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                                        opset_version=opset_version, verbose=False)
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; name the model and re-raise
        raise ExportError(f"torch.onnx.export failed for task {config.task_names[0]!r} at {size}px: {error}") from error
    finally:
        single.train(was_training)
    spec = config.tasks[0]
    program.model.metadata_props.update({
        "s5_task": spec.name,
        "s5_id2label": json.dumps({str(k): v for k, v in spec.id2label.items()}),
        "s5_ignore_index": str(spec.ignore_index),
        "s5_image_size": str(size),
        "s5_num_channels": str(config.num_channels),
    })
    return program


def _write_checked(program, path: Path, single: S5ForSemanticSegmentation, *, size: int, batch: int, verify: bool,
                   atol: float) -> None:
    """Save `program` at `path` only once onnxruntime reproduces `single`'s logits (when `verify`).

    Written into a temporary sibling folder under the final file name (weights beyond ONNX's 2 GB limit go to
    `<name>.data`, which the graph names relatively), checked there, then moved: data file first, graph last.
    """
    staging = temporary_sibling(path)
    staging.mkdir()
    try:
        staged = staging / path.name
        large = sum(p.numel() * p.element_size() for p in single.parameters()) > 1.8 * 2**30
        program.save(staged, external_data=large)
        if verify:
            difference = verify_onnx(staged, single, size=size, batch=batch, atol=atol)
            if not difference <= atol:  # also NaN
                raise ExportError(f"{path.name}: onnxruntime logits differ from PyTorch by {difference:.3g} > "
                                  f"atol {atol}; nothing written.")
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == path.name):  # the graph last
            fsync_file(entry)
            os.replace(entry, path.parent / entry.name)
        fsync_directory(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class OnnxSegmenter:
    """An exported graph in an onnxruntime session: `segmenter(pixel_values) -> logits` (numpy float32).

    `threads`: intra-op threads (default: torch's count). `spin=False` stops idle worker threads from busy-waiting
    after each run (onnxruntime's default spins), which matters when other work shares the cores.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = True):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file.")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.image_size = int(self.metadata["s5_image_size"]) if "s5_image_size" in self.metadata else None

    def __call__(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().float().numpy()
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, bands, height, width), got shape {pixel_values.shape}.")
        if self.image_size is not None and pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.path.name} takes {self.image_size}x{self.image_size} windows, got "
                             f"{pixel_values.shape[-2]}x{pixel_values.shape[-1]}: pad or tile the image first.")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]


def verify_onnx(path: str | os.PathLike, model: S5ForSemanticSegmentation, *, size: int, batch: int = 2,
                atol: float = 1e-4, seed: int = 1) -> float:
    """Max abs difference between onnxruntime's logits and the PyTorch model's (single task) on a random batch."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, model.config.num_channels, size, size, generator=generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(pixel_values.to(model.device, model.dtype)).logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    got = OnnxSegmenter(path)(pixel_values)
    if got.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime logits have shape {got.shape}, PyTorch {expected.shape}.")
    return float(np.abs(got - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m s5_hf.inference.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="S5 model folder or Hub repo id")
    parser.add_argument("output", help="ONNX file to write (.onnx)")
    parser.add_argument("--task", help="dataset head to export (required for a multi-task model)")
    parser.add_argument("--image_size", type=int, help="window size in px (default: the model's image_size)")
    parser.add_argument("--static_batch", action="store_true", help="batch 1 only (default: any batch size)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no_verify", action="store_true", help="skip the onnxruntime check against PyTorch")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    local = Path(args.model).expanduser()
    if (args.model.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        parser.error(f"{args.model}: no such model folder (a saved S5 model folder or a Hub repo id)")
    if not args.output.endswith(".onnx"):
        parser.error(f"{args.output}: the output file must end in .onnx")

    from .cli import load_model  # the one loader of S5 folders / repos

    model, _ = load_model(args.model, "cpu", args.trust_remote_code)
    start = time.perf_counter()
    path = export_onnx(model, args.output, task=args.task, image_size=args.image_size,
                       dynamic_batch=not args.static_batch, opset_version=args.opset, verify=not args.no_verify)
    checked = "" if args.no_verify else ", logits checked against PyTorch with onnxruntime"
    print(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - start:.1f} s{checked}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
