"""`s5-segment`: the command line over `segment_file` / `segment_folder`, and the one loader of S5 models for
inference (`load_model`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..cli import ArgumentParser
from ..data.images import parse_bands
from ..heap import configure_cpu_memory
from ..image_processing_s5 import S5ImageProcessor
from .scenes import SceneError, is_remote
from .segment_files import (
    OutputError,
    check_outputs,
    output_name,
    plan_folder,
    segment_file,
    segment_folder,
)
from .sliding_window import CompiledSegmenter

logger = logging.getLogger(__name__)


def _parse_bands(text: str | None) -> tuple[int | str, ...] | None:
    try:
        return parse_bands(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _parse_fraction(text: str) -> float:
    """Floats or fractions such as 1/65535."""
    if "/" in text:
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return float(text)


def load_model(model_id: str, device: str = "cpu", trust_remote_code: bool = False):
    """An S5 segmentation model and its processor from a folder or Hub repo id."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from .. import S5ForSemanticSegmentation  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSemanticSegmentation.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    if not hasattr(model.config, "tasks"):
        raise ValueError(f"{model_id}: not an S5 model (model_type {model.config.model_type!r}).")
    try:
        processor = AutoImageProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except OSError:
        logger.warning("%s has no preprocessor_config.json; using S5ImageProcessor() defaults.", model_id)
        processor = S5ImageProcessor()
    return model.to(device).eval(), processor


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="s5-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", nargs="?", help="an image (PNG/JPEG/TIFF/GeoTIFF), a folder of them, or a remote "
                        "GeoTIFF read by window through GDAL (https://..., /vsicurl/https://..., /vsis3/...)")
    parser.add_argument("output", nargs="?",
                        help="mask file (.png/.tif) or folder; default: <input stem>_mask.<ext> (or "
                             "<folder name>_masks/) in the current folder")
    parser.add_argument("--model", required=True, help="S5 model folder or Hub repo id")
    parser.add_argument("--task", help="dataset head (default: the model's default task); see --list_tasks")
    parser.add_argument("--list_tasks", action="store_true",
                        help="print the model's tasks and classes, then exit (no input needed)")
    parser.add_argument("--window", type=int, default=512, help="window size in px (multiple of 16)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction in [0, 1)")
    parser.add_argument("--batch_size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--bands", type=_parse_bands, help="bands to feed the model: 1-based numbers or GeoTIFF band descriptions, e.g. 4,3,2 "
                        "or red,green,blue (case-insensitive)")
    parser.add_argument("--rescale_factor", type=_parse_fraction,
                        help="multiplier mapping raw values to [0, 1] (default: the processor's, 1/255)")
    parser.add_argument("--color", action="store_true", help="also write <name>_color.png with a legend")
    parser.add_argument("--alpha", type=float, default=0.6, help="mask opacity in the colour image")
    parser.add_argument("--format", dest="fmt", choices=["auto", "png", "tif"], default="auto",
                        help="mask format in folder mode (auto: TIFF for TIFF inputs, PNG otherwise)")
    parser.add_argument("--cog", action="store_true",
                        help="write the mask as a Cloud-Optimized GeoTIFF (.tif: 512 px tiles, majority-class "
                             "overviews, CRS, nodata and colour map kept; GDAL's COG driver when present, else a "
                             "tiled GeoTIFF with overviews written by rasterio)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (an output that is an input is always refused)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch_compile", action="store_true",
                        help="compile the model's forward with torch.compile (minutes of compilation first; see "
                             "benchmarks/bench_inference.py --compare_compile for its effect on your machine)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="load the model with its own code")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def _looks_like_path(model_id: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) can only be a folder."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id


def _planned_outputs(args, source: Path) -> tuple[Path, Path | None]:
    """Mask and colour paths of single-file mode."""
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            output = output / output_name(source, args.fmt)
    else:
        default = Path(output_name(source, args.fmt))
        output = Path.cwd() / f"{default.stem}_mask{default.suffix}"  # never beside the input (see the docs)
    color = output.with_name(output.stem + "_color.png") if args.color else None
    return output, color


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input is None and not args.list_tasks:
        parser.error("the following arguments are required: input (or use --list_tasks)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    remote = is_remote(args.input)
    # A URL must stay a string: Path() would fold its "//" and make it unreadable for GDAL.
    source = args.input if remote else Path(args.input) if args.input is not None else None
    folder_output = None
    if args.cog and (args.fmt == "png" or (args.output and Path(args.output).suffix.lower() not in ("", ".tif", ".tiff")
                                           and not Path(args.output).is_dir())):
        print("error: --cog writes a GeoTIFF: give a .tif output (and --format tif in folder mode).", file=sys.stderr)
        return 2
    if args.cog and args.fmt == "auto":
        args.fmt = "tif"
    try:
        # Every output is checked before the model is loaded: a refused run costs nothing and writes nothing.
        if source is None or args.list_tasks:
            pass  # --list_tasks reads the model only
        elif remote:
            output, color = _planned_outputs(args, source)
            check_outputs([output] + ([color] if color else []), [], overwrite=args.overwrite)
        elif source.is_dir():
            folder_output = Path(args.output) if args.output else Path.cwd() / f"{source.resolve().name}_masks"
            plan_folder(source, folder_output, color=args.color, fmt=args.fmt, overwrite=args.overwrite)
        elif not source.is_file():
            print(f"error: {source}: no such file or folder.", file=sys.stderr)
            return 2
        else:
            output, color = _planned_outputs(args, source)
            check_outputs([output] + ([color] if color else []), [source], overwrite=args.overwrite)
    except (OutputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if _looks_like_path(args.model) and not Path(args.model).expanduser().exists():
        print(f"error: --model {args.model}: no such folder.", file=sys.stderr)
        return 2
    if str(args.device).startswith("cpu"):
        configure_cpu_memory()  # before the weights and activations are allocated (s5_hf.heap)
    try:
        model, processor = load_model(str(Path(args.model).expanduser()) if _looks_like_path(args.model)
                                      else args.model, args.device, args.trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"error: --model {args.model}: cannot load an S5 model ({type(error).__name__}: {error})",
              file=sys.stderr)
        return 2
    config = model.config
    if args.list_tasks:
        for spec in config.tasks:
            classes = ", ".join(spec.class_names)
            print(f"{spec.name}: {classes}")
        return 0
    try:
        task = config.get_task(args.task or config.default_task).name
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.torch_compile:
        model = CompiledSegmenter(model)
    options = dict(processor=processor, window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                   bands=args.bands, rescale_factor=args.rescale_factor, progress=not args.no_progress,
                   alpha=args.alpha, overwrite=args.overwrite, cog=args.cog)
    if folder_output is not None:
        try:
            result = segment_folder(model, source, folder_output, task, color=args.color, fmt=args.fmt, **options)
        except (OutputError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{len(result.succeeded)} scene(s) written to {folder_output}, {len(result.failed)} failed.")
        for path, reason in result.failed.items():
            print(f"  FAILED {path}: {reason}", file=sys.stderr)
        return 1 if result.failed else 0
    try:
        result = segment_file(model, source, output, task, color=color, **options)
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (SceneError, ValueError, OSError) as error:  # OSError: e.g. the output's folder cannot be made
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"mask": str(result.mask), "color": str(result.color) if result.color else None,
                      "size": [result.height, result.width], "pixels_per_class": result.class_counts}, indent=2))
    return 0




if __name__ == "__main__":
    sys.exit(main())
