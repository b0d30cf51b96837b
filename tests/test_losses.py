"""Tests of s5_hf.training.losses against hand-computed values and independent per-pixel loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from s5_hf.training.losses import (
    cutmix_pseudo_labels, fixmatch_unlabeled_loss, masked_cross_entropy, mdf_losses, s4p_losses, valid_share,
)


def pixel_ce(logits: torch.Tensor, b: int, y: int, x: int, label: int) -> float:
    """-log softmax of one pixel, written out."""
    scores = [float(v) for v in logits[b, :, y, x]]
    return -(scores[label] - math.log(sum(math.exp(s) for s in scores)))


def random_case(seed: int, num_classes: int = 4, shape=(2, 5, 6)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], num_classes, *shape[1:], generator=generator)
    labels = torch.randint(0, num_classes, shape, generator=generator)
    return logits, labels, generator


# --------------------------------------------------------------------------------------------------------------
# masked_cross_entropy


def test_masked_cross_entropy_equals_torch_with_one_ignore_id():
    logits, target, generator = random_case(0)
    target[torch.rand(target.shape, generator=generator) < 0.3] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(masked_cross_entropy(logits, target, ignore_index=255), expected)


def test_masked_cross_entropy_ignores_task_id_and_void():
    logits, target, generator = random_case(1, num_classes=5)
    draw = torch.rand(target.shape, generator=generator)
    target[draw < 0.2] = 5  # ISPRS clutter
    target[draw > 0.85] = 255  # padding
    total, count = 0.0, 0
    for b in range(2):
        for y in range(5):
            for x in range(6):
                label = int(target[b, y, x])
                if label not in (5, 255):
                    total += pixel_ce(logits, b, y, x, label)
                    count += 1
    loss = masked_cross_entropy(logits, target, ignore_index=5)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_masked_cross_entropy_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((1, 2, 2), 255), ignore_index=255)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_cross_entropy_errors_and_dtype():
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"\[3, 7\]"):
        masked_cross_entropy(logits, torch.tensor([[[0, 3], [7, 255]]]), ignore_index=255)
    with pytest.raises(ValueError, match="do not match"):
        masked_cross_entropy(logits, torch.zeros(1, 3, 3, dtype=torch.long), ignore_index=255)
    loss = masked_cross_entropy(logits.bfloat16(), torch.zeros(1, 2, 2, dtype=torch.long), ignore_index=255)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(math.log(3), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# fixmatch_unlabeled_loss


def test_fixmatch_loss_by_hand():
    # Two classes with equal logits: every pixel's CE is ln 2.
    logits = torch.zeros(1, 2, 1, 4, requires_grad=True)
    pseudo = torch.tensor([[[0, 1, 1, 255]]])  # the padded pixel may carry any label
    confidence = torch.tensor([[[0.99, 0.5, 0.95, 0.99]]])
    ignore = torch.tensor([[[0, 0, 0, 255]]])
    loss, ratio = fixmatch_unlabeled_loss(logits, pseudo, confidence, ignore, threshold=0.95)
    # Valid pixels 0, 1, 2; confident among them 0 and 2 (0.95 counts): loss = 2 ln 2 / 3, ratio 2 / 3.
    assert loss.item() == pytest.approx(2 * math.log(2) / 3, rel=1e-6)
    assert ratio.item() == pytest.approx(2 / 3)
    assert not ratio.requires_grad
    loss.backward()
    touched = logits.grad.abs().sum(dim=1)[0, 0]
    assert touched[0] > 0 and touched[2] > 0 and touched[1] == 0 and touched[3] == 0


def test_fixmatch_loss_matches_per_pixel_loop():
    logits, pseudo, generator = random_case(2, num_classes=16, shape=(2, 4, 5))
    confidence = torch.rand(pseudo.shape, generator=generator)
    confidence[confidence > 0.5] = 0.97
    ignore = torch.where(torch.rand(pseudo.shape, generator=generator) < 0.25, 255, 0)
    total, valid, confident = 0.0, 0, 0
    for b in range(2):
        for y in range(4):
            for x in range(5):
                if int(ignore[b, y, x]) == 255:
                    continue
                valid += 1
                if float(confidence[b, y, x]) >= 0.95:
                    confident += 1
                    total += pixel_ce(logits, b, y, x, int(pseudo[b, y, x]))
    loss, ratio = fixmatch_unlabeled_loss(logits, pseudo, confidence, ignore)
    assert loss.item() == pytest.approx(total / valid, rel=1e-5)
    assert ratio.item() == pytest.approx(confident / valid)


def test_fixmatch_loss_without_valid_pixels_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss, ratio = fixmatch_unlabeled_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2),
                                          torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0 and ratio.item() == 0.0
    loss.backward()
    assert not torch.isnan(logits.grad).any()


def test_fixmatch_loss_rejects_bad_pseudo_labels_and_shapes():
    logits = torch.zeros(1, 3, 1, 2)
    with pytest.raises(ValueError, match=r"\[3\]"):
        fixmatch_unlabeled_loss(logits, torch.tensor([[[0, 3]]]), torch.ones(1, 1, 2), torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="one shape"):
        fixmatch_unlabeled_loss(logits, torch.tensor([[[0, 1]]]), torch.ones(1, 2, 1), torch.zeros(1, 1, 2))


# --------------------------------------------------------------------------------------------------------------
# cutmix_pseudo_labels


def test_cutmix_pseudo_labels_take_partner_inside_box():
    pred_u, pred_mix = torch.tensor([[[1, 1], [1, 1]]]), torch.tensor([[[2, 2], [2, 2]]])
    conf_u, conf_mix = torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.99)
    ignore_u, ignore_mix = torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[255, 0], [0, 0]]])
    box = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.uint8)
    pred, conf, ignore = cutmix_pseudo_labels(pred_u, conf_u, ignore_u, pred_mix, conf_mix, ignore_mix, box)
    assert pred.tolist() == [[[2, 1], [2, 1]]]
    torch.testing.assert_close(conf, torch.tensor([[[0.99, 0.5], [0.99, 0.5]]]))
    assert ignore.tolist() == [[[255, 0], [0, 0]]]
    with pytest.raises(ValueError, match="0/1"):
        cutmix_pseudo_labels(pred_u, conf_u, ignore_u, pred_mix, conf_mix, ignore_mix, box * 2)
    with pytest.raises(ValueError, match="conf_mix"):
        cutmix_pseudo_labels(pred_u, conf_u, ignore_u, pred_mix, conf_mix[..., :1], ignore_mix, box)


def test_float_labels_are_refused_not_truncated():
    # Issue 11: the MDF mixed batch handed float labels to the model, which truncated 2.7 to class 2 in silence.
    # No model is needed: the check comes before any forward (an Identity would "run" on anything).
    images = torch.zeros(1, 3, 32, 32)
    floats = torch.full((1, 32, 32), 2.7)
    batches = {"vaihingen": (images, floats), "potsdam": (images, floats.long())}
    for mixed in (True, False):
        with pytest.raises(TypeError, match=r"mdf_losses: vaihingen labels.*integer class ids.*torch.float32"):
            mdf_losses(torch.nn.Identity(), batches, {"vaihingen": 5, "potsdam": 5},
                       {"vaihingen": 1.0, "potsdam": 1.0}, mixed_batch=mixed)
    unlabeled = (images, images, images, torch.zeros(1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long), None)
    with pytest.raises(TypeError, match=r"s4p_losses: labeled masks.*torch.float64"):
        s4p_losses(torch.nn.Identity(), (images, floats.double()), unlabeled, unlabeled, ignore_index=255)


def test_valid_share_counts_what_a_batch_can_train():
    labels = torch.tensor([[[0, 5], [255, 1]]])
    assert valid_share(labels, 5) == 0.5 and valid_share(labels, None) == 0.75
    assert valid_share(torch.full((2, 4, 4), 255), 255) == 0.0


def test_one_masked_cross_entropy_serves_both_mdf_paths():
    # Issue 11: the model's per-task loss and the training code's loss were two implementations picked by a flag.
    from s5_hf import S5Config, S5ForSemanticSegmentation
    from s5_hf.modeling_s5 import task_cross_entropy

    assert masked_cross_entropy is task_cross_entropy
    torch.manual_seed(0)
    model = S5ForSemanticSegmentation(S5Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, out_indices=[1, 2, 3, 4],
        decoder_hidden_size=16, part_features=8, tasks=["vaihingen", "loveda"])).eval()
    generator = torch.Generator().manual_seed(0)
    batches = {name: (torch.randn(2, 3, 64, 64, generator=generator),
                      torch.randint(0, 6, (2, 64, 64), generator=generator)) for name in ("vaihingen", "loveda")}
    batches["vaihingen"][1][:, :8] = 5  # ISPRS clutter: that task's ignore id
    ignore, weights = {"vaihingen": 5, "loveda": 255}, {"vaihingen": 1.0, "loveda": 0.5}
    with torch.no_grad():
        mixed = mdf_losses(model, batches, ignore, weights, mixed_batch=True)[0]
        separate = mdf_losses(model, batches, ignore, weights, mixed_batch=False)[0]
    for key in ("loss", "loss_vaihingen", "loss_loveda"):
        torch.testing.assert_close(mixed[key], separate[key], atol=1e-6, rtol=1e-5)
