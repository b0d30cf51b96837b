"""Segmenting files and folders: output planning and the checks that keep a mask from overwriting its input, the
package, or an existing file without `--overwrite`."""


from __future__ import annotations

import logging
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..image_processing_s5 import S5ImageProcessor
from ..label_sets import VOID_ID
from ..visualize import task_palette

logger = logging.getLogger(__name__)



from .scenes import IMAGE_SUFFIXES, TIFF_SUFFIXES, Scene, SceneError, is_remote, open_scene
from .sliding_window import Normalization, SlidingWindow, _check_scale, _select_bands, iter_label_strips
from .writers import ColorComposer, _label_writer

class OutputError(ValueError):
    """An output path is refused: it is an input, an existing file (without overwrite), or inside the installed
    package; the message names the path."""


# ----------------------------------------------------------------------------------------------------------------
# Reading scenes
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SceneResult:
    source: str
    mask: Path
    color: Path | None
    height: int
    width: int
    class_counts: dict[str, int] = field(default_factory=dict)


def segment_file(
    model,
    source: str | os.PathLike | Scene,
    output: str | os.PathLike,
    task: str | None = None,
    *,
    color: str | os.PathLike | None = None,
    alpha: float = 0.6,
    processor: S5ImageProcessor | None = None,
    window: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    bands: Sequence[int | str] | str | None = None,
    rescale_factor: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
    cog: bool = False,
) -> SceneResult:
    """Predict the scene at `source` and write its label map to `output` (.png or .tif), row block by row block.

    With `color`, also write a colour PNG (mask over the scene with opacity `alpha`, legend on the right). With
    `cog`, the mask (.tif) is a Cloud-Optimized GeoTIFF (`writers.write_cog`: tiled, overviews, CRS, nodata and
    colour map kept). `source` may be a GDAL virtual path or URL read with rasterio (``/vsicurl/https://...``,
    ``https://...``, ``/vsis3/...``), read window by window over HTTP range requests.
    Outputs appear only when complete. An output that is the input file (or a link to it) or lies inside the
    installed package raises `OutputError`; so does an existing output unless `overwrite`. Other arguments: see
    `segment_scene`.
    """
    config = model.config
    task_spec = config.get_task(task if task is not None else config.default_task)
    class_names = task_spec.class_names
    palette = task_palette(task_spec)
    processor = processor or S5ImageProcessor()
    output = Path(output)
    outputs = [output] + ([Path(color)] if color is not None else [])
    local = isinstance(source, (str, os.PathLike)) and not is_remote(source)
    check_outputs(outputs, [source] if local else [], overwrite=overwrite)
    if color is not None and Path(color).resolve() == output.resolve():
        raise OutputError(f"{output}: the mask and the colour image would be the same file.")
    scene = open_scene(source)
    writers: list = []
    try:
        channels = _select_bands(scene, bands, config.num_channels)
        # Bad scaling is found before any folder or file is created (it would also stop the first strip).
        _check_scale(scene, Normalization.from_processor(processor, rescale_factor), rescale_factor is not None)
        output.parent.mkdir(parents=True, exist_ok=True)
        writers.append(_label_writer(output, scene, palette, class_names, cog=cog))
        if color is not None:
            scale = Normalization.from_processor(processor, rescale_factor).rescale_factor
            writers.append(ColorComposer(Path(color), scene, channels, scale, palette, class_names,
                                          f"{task_spec.name}", alpha))
        counts = np.zeros(256, dtype=np.int64)
        for _, labels in iter_label_strips(
            model, scene, task_spec.name, processor=processor, sliding=SlidingWindow(window, overlap, batch_size),
            bands=bands, rescale_factor=rescale_factor, progress=progress,
        ):
            counts += np.bincount(labels.ravel(), minlength=256)
            for writer in writers:
                writer.write(labels)
        paths = [writer.close() for writer in writers]
        writers.clear()
    finally:
        for writer in writers:
            writer.abort()
        scene.close()
    named = {name: int(counts[k]) for k, name in enumerate(class_names)}
    if counts[VOID_ID]:
        named["<nodata>"] = int(counts[VOID_ID])
    return SceneResult(str(source), paths[0], paths[1] if color is not None else None, scene.height, scene.width, named)


@dataclass
class FolderResult:
    succeeded: list[SceneResult]
    failed: dict[str, str]


def output_name(source: Path | str, fmt: str) -> str:
    """Mask file name for `source`: `auto` keeps TIFFs as TIFF (georeferencing) and writes PNG otherwise."""
    if isinstance(source, str):  # a URL or GDAL virtual path: its last component, without a query
        source = Path(source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "scene")
    if fmt == "auto":
        fmt = "tif" if source.suffix.lower() in TIFF_SUFFIXES else "png"
    return f"{source.stem}.{fmt}"


def _protected_folders() -> list[Path]:
    """Folders s5-segment never writes into: the installed s5_hf package (its sample scenes are inputs users
    try first) and the interpreter's site-packages."""
    folders = {Path(__file__).resolve().parents[1]}  # the installed s5_hf package
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        if paths.get(key):
            folders.add(Path(paths[key]).resolve())
    return sorted(folders)


def check_outputs(outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike] = (),
                  overwrite: bool = False) -> None:
    """Raise `OutputError` naming the first of `outputs` that resolves to one of `inputs` (symlinks and hard
    links included), lies inside the installed package or site-packages, is a folder, or exists while
    `overwrite` is false. Writes nothing."""
    resolved_inputs = {}
    for source in inputs:
        source = Path(source)
        resolved_inputs[source.resolve()] = source
    inodes = {}
    for target, source in resolved_inputs.items():
        try:
            stat = target.stat()
        except OSError:
            continue
        inodes[stat.st_dev, stat.st_ino] = source
    protected = _protected_folders()
    for output in map(Path, outputs):
        target = output.resolve()
        same = resolved_inputs.get(target)
        if same is None and output.exists():
            stat = output.stat()
            same = inodes.get((stat.st_dev, stat.st_ino))
        if same is not None:
            raise OutputError(f"{output}: is the input file {same}; writing the mask there would destroy the "
                              f"imagery. Choose another output path or folder.")
        for folder in protected:
            if target.is_relative_to(folder):
                raise OutputError(f"{output}: inside the installed package or site-packages ({folder}); write "
                                  f"the mask somewhere else (pass an output path, or run from another folder).")
        if output.is_dir():
            raise OutputError(f"{output}: is a folder, not a mask file.")
        if output.exists() and not overwrite:
            raise OutputError(f"{output}: already exists; pass --overwrite (overwrite=True) to replace it.")


def plan_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, color: bool = False,
                fmt: str = "auto", overwrite: bool = False) -> tuple[dict[Path, tuple[Path, Path]], FolderResult]:
    """The outputs of folder mode, checked before anything is written: {source: (mask, colour image)} and a
    `FolderResult` whose `failed` lists scenes skipped because two of them would write the same file. Raises
    `OutputError` when any output is refused (see `check_outputs`), `FileNotFoundError` for a missing folder."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: not a folder.")
    sources = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not sources:
        raise FileNotFoundError(f"{input_dir}: no {'/'.join(IMAGE_SUFFIXES)} files.")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: is a file; folder mode writes its masks into a folder.")
    result = FolderResult([], {})
    plan: dict[Path, tuple[Path, Path]] = {}
    taken: dict[str, Path] = {}
    for source in sources:
        name = output_name(source, fmt)
        names = [name] + ([f"{Path(name).stem}_color.png"] if color else [])
        clash = next((n for n in names if n in taken), None)
        if clash is not None:
            result.failed[str(source)] = f"its output {clash} would overwrite an output of {taken[clash].name}"
            continue
        taken.update(dict.fromkeys(names, source))
        plan[source] = (output_dir / name, output_dir / f"{Path(name).stem}_color.png")
    outputs = [outputs[0] for outputs in plan.values()] + ([o[1] for o in plan.values()] if color else [])
    check_outputs(outputs, sources, overwrite=overwrite)
    return plan, result


def segment_folder(
    model,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    task: str | None = None,
    *,
    color: bool = False,
    fmt: str = "auto",
    overwrite: bool = False,
    **kwargs,
) -> FolderResult:
    """Predict every PNG/JPEG/TIFF in `input_dir` (not recursive) into `output_dir`.

    A file that fails (unreadable, wrong bands, ...) is reported and skipped; the others are still written.
    `color` adds `<stem>_color.png` per scene. Every output is checked first (`plan_folder`): if any would be an
    input file, or exists and `overwrite` is false, `OutputError` is raised and nothing is written. Other
    arguments: see `segment_file`.
    """
    output_dir = Path(output_dir)
    plan, result = plan_folder(input_dir, output_dir, color=color, fmt=fmt, overwrite=overwrite)
    for source, reason in result.failed.items():
        logger.error("%s: skipped, %s", source, reason)
    for source, outputs in tqdm(plan.items(), unit="scene", desc="scenes", disable=not kwargs.get("progress", True)):
        try:
            result.succeeded.append(segment_file(
                model, source, outputs[0], task, color=outputs[1] if color else None, overwrite=overwrite, **kwargs,
            ))
        except SceneError as error:
            result.failed[str(source)] = str(error)
            logger.error("%s", error)
        except Exception as error:  # keep going: one bad scene must not cost the others
            result.failed[str(source)] = f"{type(error).__name__}: {error}"
            logger.exception("%s failed", source)
    return result


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
