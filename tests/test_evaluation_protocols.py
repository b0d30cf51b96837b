"""The evaluation protocols (s5_hf/evaluation/protocols.py): flip averaging, sliding windows and resizing, scores
against the masks, and what a result states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from s5_hf import S5ForSemanticSegmentation
from s5_hf.evaluation.protocols import EvalProtocol, FlipAveraged, evaluate_task, predict_labels, protocol_for
from s5_hf.image_processing_s5 import S5ImageProcessor


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return S5ForSemanticSegmentation(tiny_config(image_size=32, part_features=8, tasks=["potsdam", "loveda"])).eval()


def test_protocols_of_the_known_datasets():
    assert protocol_for("potsdam") == EvalProtocol("slide", flip=True, metric="mean_f1", official_inflation=True)
    assert protocol_for("loveda").mode == "resize" and protocol_for("isaid").exclude_from_mean == (0,)
    assert protocol_for("my-dataset") == EvalProtocol()


def test_flip_averaging_is_the_mean_of_both_probabilities(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (model(x, task="potsdam").logits.softmax(1)
                    + model(x.flip(-1), task="potsdam").logits.softmax(1).flip(-1)) / 2
        got = FlipAveraged(model)(x, task="potsdam").logits.softmax(1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["slide", "resize"])
def test_predictions_come_back_at_the_label_size(model, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    labels = predict_labels(model, image, "loveda", EvalProtocol(mode), 32, S5ImageProcessor())
    assert labels.shape == (40, 56) and labels.max() < 7


def test_batched_sliding_windows_give_the_same_labels(model):
    """--eval_batch_size: windows batched per forward give the labels of one window at a time (ISPRS protocol,
    sliding windows with flip averaging)."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (72, 88, 3), dtype=np.uint8))
    one = predict_labels(model, image, "potsdam", protocol_for("potsdam"), 32, S5ImageProcessor(), batch_size=1)
    for batch_size in (3, 16):
        batched = predict_labels(model, image, "potsdam", protocol_for("potsdam"), 32, S5ImageProcessor(),
                                 batch_size=batch_size)
        assert np.array_equal(batched, one), batch_size


def test_evaluate_task_scores_against_the_masks_and_refuses_mismatches(model):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    pred = predict_labels(model, image, "potsdam", protocol_for("potsdam"), 32, S5ImageProcessor())
    mask = pred.astype(np.uint8).copy()
    mask[:4] = 5  # clutter: ignored
    result = evaluate_task(model, [{"id": "a", "image": image, "mask": Image.fromarray(mask)}], "potsdam", crop_size=32)
    assert result.scores.overall_accuracy == 1.0 and result.scores.num_pixels == 32 * 28
    assert result.official.overall_accuracy > 0.99  # the official metric counts the clutter rows as "car" hits
    with pytest.raises(ValueError, match="image .* and mask .* differ"):
        evaluate_task(model, [{"id": "b", "image": image, "mask": Image.fromarray(mask[:16])}], "potsdam", crop_size=32)
    with pytest.raises(ValueError, match="has no mask"):
        evaluate_task(model, [{"id": "c", "image": image, "mask": None}], "potsdam", crop_size=32)


def test_results_state_their_split_sample_count_and_cap(model):
    images = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(5)]
    masks = [Image.fromarray(np.full((32, 32), i % 2, np.uint8)) for i in range(5)]
    rows = [{"image": im, "mask": m, "id": str(i)} for i, (im, m) in enumerate(zip(images, masks))]
    result = evaluate_task(model, rows, "potsdam", crop_size=32, max_samples=3)
    facts = result.describe()
    assert facts["num_samples"] == 3 and facts["max_samples"] == 3 and facts["reported_metric"] == "mean_f1"
    # Classes absent from both prediction and labels make NaN scores (the official ISPRS mF1 too): JSON gets
    # null, never NaN.
    assert facts["official_mF1"] is None and json.dumps(facts, allow_nan=False)
