"""s5-hf: S5 remote-sensing segmentation models, data and training for the Hugging Face ecosystem.

Importing the package registers the S5 classes with the transformers Auto classes, so
`AutoModelForSemanticSegmentation.from_pretrained(...)` works on S5 folders and Hub repos.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
)
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

from .configuration_s5 import PRESETS, S5Config
from .image_processing_s5 import S5ImageProcessor
from .modeling_s5 import (
    S5Backbone,
    S5ForSemanticSegmentation,
    S5Model,
    S5ModelOutput,
    S5PreTrainedModel,
    S5SemanticSegmenterOutput,
)

__version__ = "0.1.0"

AutoConfig.register(S5Config.model_type, S5Config, exist_ok=True)
AutoModel.register(S5Config, S5Model, exist_ok=True)
AutoBackbone.register(S5Config, S5Backbone, exist_ok=True)
AutoModelForSemanticSegmentation.register(S5Config, S5ForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(S5Config, slow_image_processor_class=S5ImageProcessor, exist_ok=True)
# S5 has no video processor. Saying so (an empty registration) stops transformers 5 from guessing an
# "S5VideoProcessor" in the folder's remote code and prompting about it while a pipeline loads a folder.
VIDEO_PROCESSOR_MAPPING.register(S5Config, {}, exist_ok=True)

# Saved folders carry the code and an `auto_map`, so they also load with `trust_remote_code=True` where
# s5_hf is not installed.
S5Config.register_for_auto_class()
S5Model.register_for_auto_class("AutoModel")
S5Backbone.register_for_auto_class("AutoBackbone")
S5ForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
S5ImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "PRESETS",
    "S5Backbone",
    "S5Config",
    "S5ForSemanticSegmentation",
    "S5ImageProcessor",
    "S5Model",
    "S5ModelOutput",
    "S5PreTrainedModel",
    "S5SemanticSegmenterOutput",
]

# ---- Oriented object detection (issue 13): Auto-class registration of the detection classes -------------------
# Kept in one block so the detection code stays separate from the segmentation classes above.
from transformers import AutoModelForObjectDetection  # noqa: E402

from .configuration_s5_detection import S5DetectionConfig  # noqa: E402
from .image_processing_s5_detection import S5DetectionImageProcessor  # noqa: E402
from .modeling_s5_detection import S5ForOrientedDetection, S5OrientedDetectionOutput  # noqa: E402

AutoConfig.register(S5DetectionConfig.model_type, S5DetectionConfig, exist_ok=True)
AutoModelForObjectDetection.register(S5DetectionConfig, S5ForOrientedDetection, exist_ok=True)
AutoImageProcessor.register(S5DetectionConfig, slow_image_processor_class=S5DetectionImageProcessor, exist_ok=True)
S5DetectionConfig.register_for_auto_class()
S5ForOrientedDetection.register_for_auto_class("AutoModelForObjectDetection")
S5DetectionImageProcessor.register_for_auto_class("AutoImageProcessor")
# No video processor either (see the segmentation registration above for why this is declared).
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING as _VIDEO_PROCESSORS  # noqa: E402

_VIDEO_PROCESSORS.register(S5DetectionConfig, {}, exist_ok=True)
__all__ += ["S5DetectionConfig", "S5DetectionImageProcessor", "S5ForOrientedDetection", "S5OrientedDetectionOutput"]
