"""`pipeline("oriented-object-detection")`: transformers' object-detection pipeline with the rotated boxes kept.

`pipeline("object-detection", model=...)` works with S5 detectors as with any transformers detector, but its
answers can only hold axis-aligned boxes (the hull of each rotated box). Importing this module registers
"oriented-object-detection", whose answers add each detection's `oriented_box` (cx, cy, w, h, angle in radians, in
the image's pixels) and `polygon` (the 4 corners):

    import s5_hf.detection.pipeline  # registers the task
    detector = pipeline("oriented-object-detection", model="path/or/hub-id")
    detector("scene.png", threshold=0.3)
    # [{"score": 0.91, "label": "ship", "box": {"xmin": ...}, "oriented_box": {"cx": ...}, "polygon": [[x, y], ...]}]
"""

from __future__ import annotations

from transformers import AutoModelForObjectDetection
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.object_detection import ObjectDetectionPipeline

from .. import S5ForOrientedDetection  # noqa: F401  (registers the Auto classes)

TASK = "oriented-object-detection"


class OrientedDetectionPipeline(ObjectDetectionPipeline):
    """Object detection whose answers keep the rotated box and its corners beside the axis-aligned `box`."""

    def postprocess(self, model_outputs, threshold: float = 0.5):
        (raw,) = self.image_processor.post_process_object_detection(model_outputs, threshold,
                                                                   model_outputs["target_size"])
        answers = []
        for score, label, hull, oriented, corners in zip(raw["scores"], raw["labels"], raw["boxes"],
                                                        raw["oriented_boxes"], raw["corners"]):
            cx, cy, w, h, angle = (float(v) for v in oriented)
            answers.append({
                "score": float(score),
                "label": self.model.config.id2label[int(label)],
                "box": self._get_bounding_box(hull),
                "oriented_box": {"cx": cx, "cy": cy, "w": w, "h": h, "angle": angle},
                "polygon": [[float(x), float(y)] for x, y in corners],
            })
        return answers


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=OrientedDetectionPipeline,
                                    pt_model=AutoModelForObjectDetection, type="image")

__all__ = ["OrientedDetectionPipeline", "TASK"]
