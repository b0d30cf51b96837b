"""RS4P foreground entropy of the predicted class probabilities and the per-image scores (rs4p/entropy.py)."""

from __future__ import annotations

import math

import pytest
import torch

from s5_hf.rs4p import foreground_entropy, score_logits


def test_foreground_entropy_matches_hand_computation():
    # One image, 3 classes, 2 pixels. Pixel 1: logits (0, ln 2, ln 3) -> p = (1/6, 2/6, 3/6).
    # Pixel 2: logits (0, 0, 0) -> p = 1/3 each. Background = class 0, left out of the sum only.
    logits = torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [math.log(3), 0.0]]).view(1, 3, 1, 2)
    pixel1 = -(2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6))
    pixel2 = -2 * (1 / 3 * math.log(1 / 3))
    assert foreground_entropy(logits, background_id=0).item() == pytest.approx((pixel1 + pixel2) / 2, rel=1e-6)
    full1 = pixel1 - 1 / 6 * math.log(1 / 6)
    full2 = -3 * (1 / 3 * math.log(1 / 3))
    assert foreground_entropy(logits, background_id=None).item() == pytest.approx((full1 + full2) / 2, rel=1e-6)
    # Excluding class 2 instead.
    other1 = -(1 / 6 * math.log(1 / 6) + 2 / 6 * math.log(2 / 6))
    assert foreground_entropy(logits, background_id=2).item() == pytest.approx((other1 + pixel2) / 2, rel=1e-6)


def test_foreground_entropy_saturated_and_invalid():
    logits = torch.tensor([[1000.0], [-1000.0]]).view(1, 2, 1, 1)  # p = (1, 0): no NaN from 0 * log 0
    assert foreground_entropy(logits, background_id=0).item() == 0.0
    with pytest.raises(ValueError, match="background_id"):
        foreground_entropy(torch.zeros(1, 3, 2, 2), background_id=3)
    with pytest.raises(ValueError, match="batch, classes, height, width"):
        foreground_entropy(torch.zeros(3, 2, 2))


def test_score_logits_labels_confidence_counts():
    logits = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    logits[1, :, 0, 0] = float("nan")
    scores = score_logits(logits, background_id=0)
    probs = logits.softmax(dim=1)
    assert torch.equal(scores.pseudo_labels[[0, 2]].long(), logits[[0, 2]].argmax(dim=1))
    assert scores.confidence[0].item() == pytest.approx(probs[0].max(dim=0).values.mean().item(), rel=1e-6)
    for i in (0, 2):
        expected = torch.bincount(logits[i].argmax(dim=0).flatten(), minlength=5)
        assert torch.equal(scores.class_counts[i], expected)
    assert scores.finite.tolist() == [True, False, True]
