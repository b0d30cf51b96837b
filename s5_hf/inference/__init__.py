"""Inference on scenes of any size: readers (`scenes`), the sliding-window predictor (`sliding_window`), label-map
writers (`writers`), file and folder runs with their output checks (`segment_files`), the `s5-segment` command
(`cli`) and deployment export (`export`)."""

from .cli import load_model, main
from .scenes import ArrayScene, Scene, SceneError, open_scene
from .segment_files import FolderResult, OutputError, SceneResult, check_outputs, plan_folder, segment_file, segment_folder
from .sliding_window import CompiledSegmenter, Normalization, SlidingWindow, hann_weights, iter_label_strips, segment_scene
from .writers import PngRowWriter

__all__ = [
    "ArrayScene",
    "CompiledSegmenter",
    "FolderResult",
    "Normalization",
    "OutputError",
    "PngRowWriter",
    "Scene",
    "SceneError",
    "SceneResult",
    "SlidingWindow",
    "check_outputs",
    "hann_weights",
    "iter_label_strips",
    "load_model",
    "main",
    "open_scene",
    "plan_folder",
    "segment_file",
    "segment_folder",
    "segment_scene",
]
