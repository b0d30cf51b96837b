"""transformers pipelines over a saved S5 detector: "object-detection" (axis-aligned hulls) and our
"oriented-object-detection" (rotated boxes and corners kept), both quiet and both in the original image's pixels."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import s5_hf.detection.pipeline  # noqa: F401  (registers "oriented-object-detection")
from s5_hf.image_processing_s5_detection import S5DetectionImageProcessor
from s5_hf.modeling_s5_detection import S5ForOrientedDetection

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_detection_config):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("detector")
    S5ForOrientedDetection(tiny_detection_config()).eval().save_pretrained(folder)
    S5DetectionImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def image(height=80, width=100):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_object_detection_pipeline_gives_the_hulls_of_the_processors_rotated_boxes(saved, transformers_records):
    answers = pipeline("object-detection", model=str(saved))(image(), threshold=0.0)
    assert answers and set(answers[0]) == {"score", "label", "box"}
    assert [r.getMessage() for r in transformers_records] == []
    # The same numbers by hand: processor -> model -> post-processing to the 80 x 100 original.
    model = S5ForOrientedDetection.from_pretrained(saved).eval()
    processor = S5DetectionImageProcessor.from_pretrained(saved)
    with torch.no_grad():
        outputs = model(**processor(image(), return_tensors="pt"))
    (expected,) = processor.post_process_object_detection(outputs, 0.0, target_sizes=[(80, 100)])
    assert [a["score"] for a in answers] == pytest.approx(expected["scores"].tolist())
    hull = expected["boxes"].int().tolist()
    assert [[a["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for a in answers] == hull
    assert {a["label"] for a in answers} <= {"airplane", "ship"}  # the default task's classes


def test_oriented_pipeline_keeps_the_rotated_box_and_its_corners(saved, transformers_records):
    # A square original: the 64 px input scales back uniformly, so each polygon stays a rectangle (an uneven
    # scale turns it into a parallelogram and `oriented_box` into its minimum-area rectangle).
    answers = pipeline("oriented-object-detection", model=str(saved))(image(128, 128), threshold=0.0)
    assert answers and [r.getMessage() for r in transformers_records] == []
    for answer in answers:
        polygon = np.array(answer["polygon"])
        assert polygon.shape == (4, 2)
        box = answer["oriented_box"]
        assert np.allclose(polygon.mean(0), [box["cx"], box["cy"]], atol=1e-3)
        side = np.linalg.norm(polygon[1] - polygon[0]), np.linalg.norm(polygon[2] - polygon[1])
        assert sorted(side) == pytest.approx(sorted([box["w"], box["h"]]), rel=1e-4)
        # the axis-aligned box is the polygon's hull (truncated to integers as in transformers)
        assert answer["box"] == {"xmin": int(polygon[:, 0].min()), "ymin": int(polygon[:, 1].min()),
                                 "xmax": int(polygon[:, 0].max()), "ymax": int(polygon[:, 1].max())}
