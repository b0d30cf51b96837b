"""Losses of S4P (supervised + FixMatch-style unlabeled term with CutMix) and MoE-MDF (per-dataset CE).

The S4P step (the paper's FixMatch-style pretraining): the same network, in eval mode and without gradients, predicts the weak views of
the unlabeled batch u and of its CutMix partner batch u_mix; pseudo-label = argmax, confidence = max softmax.
`cutmix_pseudo_labels` pastes u_mix's label, confidence and ignore mask inside the CutMix box (where the strong
image was pasted from u_mix, see `s5_hf.training.augment.cutmix_images`), and `fixmatch_unlabeled_loss` scores the strong
predictions against them. The total is `(masked_cross_entropy(labeled) + loss_u) / 2`.

Losses are computed in float32 whatever the logits' dtype, so they are safe under AMP autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..label_sets import VOID_ID
# The one masked cross-entropy of the package (the model's own loss), under the name the training code uses:
# `masked_cross_entropy(logits, target, ignore_index, task_name="task")`. It lives in the model file because that
# file must work on its own as remote code.
from ..modeling_s5 import task_cross_entropy as masked_cross_entropy

# The ignore id handed to F.cross_entropy after our own masking; never a class id or a dataset's ignore id.
_MASKED = -100


def check_label_dtype(labels: torch.Tensor, name: str) -> None:
    """Class ids must be integers: float labels would be truncated to ids silently (2.7 -> 2)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be integer class ids (uint8/int64), got dtype {labels.dtype}; "
                        "convert label maps with .long() only if they hold whole class ids.")


def valid_share(labels: torch.Tensor, ignore_index: int | None) -> float:
    """Share of pixels that are neither void (255) nor `ignore_index`: what a batch can train."""
    invalid = labels == VOID_ID
    if ignore_index is not None:
        invalid |= labels == ignore_index
    return float(1.0 - invalid.float().mean()) if labels.numel() else 0.0


def _check_logits_and_target(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if logits.ndim < 2 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{name}: logits {tuple(logits.shape)} (B, K, ...) do not match targets {tuple(target.shape)} "
                         "(B, ...).")
    check_label_dtype(target, name)


def cutmix_pseudo_labels(
    pred_u: torch.Tensor,
    conf_u: torch.Tensor,
    ignore_u: torch.Tensor,
    pred_mix: torch.Tensor,
    conf_mix: torch.Tensor,
    ignore_mix: torch.Tensor,
    box: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pseudo-label, confidence, ignore mask) of the CutMix-ed strong images: u's values outside the box and the
    partner's inside it (box == 1). All inputs are (B, H, W); `box` holds 0/1 (any integer or bool dtype)."""
    shape = pred_u.shape
    for name, tensor in (("conf_u", conf_u), ("ignore_u", ignore_u), ("pred_mix", pred_mix),
                         ("conf_mix", conf_mix), ("ignore_mix", ignore_mix), ("box", box)):
        if tensor.shape != shape:
            raise ValueError(f"cutmix_pseudo_labels: {name} has shape {tuple(tensor.shape)}, pred_u {tuple(shape)}.")
    if box.dtype != torch.bool:
        if box.is_floating_point() or ((box != 0) & (box != 1)).any():
            raise ValueError("cutmix_pseudo_labels: box must be a 0/1 integer or bool mask.")
        box = box.bool()
    pseudo_label = torch.where(box, pred_mix, pred_u)
    return pseudo_label, torch.where(box, conf_mix, conf_u), torch.where(box, ignore_mix, ignore_u)


def fixmatch_unlabeled_loss(
    logits_strong: torch.Tensor,
    pseudo_label: torch.Tensor,
    confidence: torch.Tensor,
    ignore_mask: torch.Tensor,
    threshold: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unlabeled loss of S4P and the share of confident pixels.

    Per-pixel cross-entropy of `logits_strong` (B, K, H, W) against `pseudo_label` (B, H, W), kept where
    `confidence >= threshold` and `ignore_mask != 255`, summed, and divided by the number of valid
    (`ignore_mask != 255`) pixels, confident or not: low-confidence pixels count in the denominator, as in the
    official code. Background is a class like any other for the threshold.

    Returns `(loss, confident_ratio)`: a 0-dim float32 loss and the detached share of valid pixels that are
    confident. With no valid pixel both are 0 (the official code would divide by zero).
    """
    _check_logits_and_target(logits_strong, pseudo_label, "fixmatch_unlabeled_loss")
    if confidence.shape != pseudo_label.shape or ignore_mask.shape != pseudo_label.shape:
        raise ValueError(f"fixmatch_unlabeled_loss: pseudo_label {tuple(pseudo_label.shape)}, confidence "
                         f"{tuple(confidence.shape)} and ignore_mask {tuple(ignore_mask.shape)} must have one shape.")
    num_classes = logits_strong.shape[1]
    valid = ignore_mask != VOID_ID
    pseudo_label = pseudo_label.long()
    invalid = valid & ((pseudo_label < 0) | (pseudo_label >= num_classes))
    if invalid.any():
        values = torch.unique(pseudo_label[invalid]).tolist()[:10]
        raise ValueError(f"Pseudo-labels {values} are outside the {num_classes} classes at valid pixels.")
    confident = valid & (confidence >= threshold)
    # Padding may carry any pseudo-label; masking it keeps F.cross_entropy from seeing it.
    per_pixel = F.cross_entropy(logits_strong.float(), pseudo_label.masked_fill(~valid, _MASKED),
                                ignore_index=_MASKED, reduction="none")
    num_valid = valid.sum()
    denominator = num_valid.clamp(min=1)
    loss = (per_pixel * confident).sum() / denominator
    confident_ratio = (confident.sum() / denominator).detach().float()
    return loss, confident_ratio


# ---------------------------------------------------------------------------------------------------------------
# One training step's losses of each stage (shared by the training scripts and the benchmarks)


def s4p_losses(
    model: torch.nn.Module,
    labeled: Sequence[torch.Tensor],
    unlabeled: Sequence[torch.Tensor],
    partner: Sequence[torch.Tensor],
    ignore_index: int | None,
    threshold: float = 0.95,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The S4P step's losses from a labeled batch `(image, mask)` and two unlabeled batches in
    `UnlabeledTransform` layout, `(weak, strong1, strong2, ignore_mask, box1, box2)`: u and its CutMix partner.

    The model (in train mode) is switched to eval mode without gradients to pseudo-label both weak views, then
    back. Returns `({"loss", "loss_x", "loss_u"}, {"confident_ratio", "valid_share_labeled",
    "valid_share_unlabeled"})`; optimise "loss" = (loss_x + loss_u) / 2.
    """
    from .augment import cutmix_images

    img_x, mask_x = labeled
    img_u_w, img_u_s, _, ignore_u, box, _ = unlabeled
    img_m_w, img_m_s, _, ignore_m, _, _ = partner
    check_label_dtype(mask_x, "s4p_losses: labeled masks")
    shares = {"valid_share_labeled": valid_share(mask_x, ignore_index),
              "valid_share_unlabeled": valid_share(ignore_u, None)}
    with torch.no_grad():
        model.eval()
        probs = model(torch.cat([img_u_w, img_m_w])).logits.float().softmax(1)
        model.train()
    conf, pred = probs.max(1)
    n = img_u_w.shape[0]
    pseudo, conf, ignore = cutmix_pseudo_labels(pred[:n], conf[:n], ignore_u, pred[n:], conf[n:], ignore_m, box)
    logits = model(torch.cat([img_x, cutmix_images(img_u_s, img_m_s, box)])).logits
    loss_x = masked_cross_entropy(logits[: img_x.shape[0]], mask_x, ignore_index, "s4p labeled")
    loss_u, ratio = fixmatch_unlabeled_loss(logits[img_x.shape[0]:], pseudo, conf, ignore, threshold)
    return {"loss": (loss_x + loss_u) / 2, "loss_x": loss_x, "loss_u": loss_u}, {"confident_ratio": float(ratio),
                                                                                **shares}


def mdf_losses(
    model: torch.nn.Module,
    batches: dict[str, Sequence[torch.Tensor]],
    ignore_index: dict[str, int | None],
    weights: dict[str, float],
    mixed_batch: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The MoE-MDF step's losses: `batches` maps each task to its `(images, labels)`; the total is the
    `weights`-weighted sum of the per-task cross-entropies (each with its ignore index).

    With `mixed_batch` all tasks run in one forward (the model routes rows to their experts and decoders);
    otherwise one forward per task, as the official code. A task whose weight is 0 still runs (its gradient is 0),
    so every process uses every parameter. Returns `({"loss", "loss_<task>"...}, {"weight_<task>"...,
    "valid_share_<task>"...})`. Labels must be integer class ids (float labels are refused, not truncated).
    """
    for name, (_, labels) in batches.items():
        check_label_dtype(labels, f"mdf_losses: {name} labels")
    shares = {f"valid_share_{name}": valid_share(labels, ignore_index[name]) for name, (_, labels) in batches.items()}
    if mixed_batch:
        images = torch.cat([b[0] for b in batches.values()])
        labels = torch.cat([b[1] for b in batches.values()])
        tasks = [name for name, b in batches.items() for _ in range(b[0].shape[0])]
        # The model computes each task's loss on its own rows and classes (mixed rows are padded to the widest).
        losses = dict(model(images, task=tasks, labels=labels).task_losses)
    else:
        losses = {name: masked_cross_entropy(model(images, task=name).logits, labels, ignore_index[name], name)
                  for name, (images, labels) in batches.items()}
    total = sum(weights[name] * value for name, value in losses.items())
    return {"loss": total, **{f"loss_{name}": value for name, value in losses.items()}}, {
        **{f"weight_{name}": weights[name] for name in batches}, **shares}


__all__ = ["check_label_dtype", "cutmix_pseudo_labels", "fixmatch_unlabeled_loss", "masked_cross_entropy", "mdf_losses",
           "s4p_losses", "valid_share"]
