"""S5 oriented object detection: Oriented R-CNN (FPN, oriented RPN, rotated RoI head) on the S5 backbone.

One head stack per task (dataset), selected per image like the FFN experts, so a batch mixing DIOR-R and
DOTA-v2 images runs one backbone forward. Everything is pure PyTorch (see the `obb_*` modules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES
from transformers.utils import ModelOutput

from .configuration_s5_detection import S5DetectionConfig
from .modeling_s5 import S5Model, S5PreTrainedModel, TaskRouting, resolve_task_ids
from .obb_anchors import grid_anchors
from .obb_assign import max_iou_assign, random_sample
from .obb_coder_delta import delta_decode, delta_encode
from .obb_coder_midpoint import midpoint_decode, midpoint_encode
from .obb_geometry import hbb_iou, obb_to_hbb
from .obb_iou import obb_iou
from .obb_nms import batched_hbb_nms, nms_from_iou
from .obb_roi_align import extract_roi_features


@dataclass
class S5OrientedDetectionOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): with `targets`: the sum over the tasks in the batch of each task's
            RPN classification + RPN box + RoI classification + RoI box losses.
        loss_dict (`dict[str, torch.FloatTensor]`, *optional*): the parts, named `<task>/<loss>`.
        boxes (`list[torch.FloatTensor]`): per image, `(n, 5)` detections `(cx, cy, w, h, angle)` in input pixels
            (regular form: w >= h, angle in [-pi/2, pi/2)). Empty in training mode.
        scores (`list[torch.FloatTensor]`): per image, `(n,)` class probabilities of the detections.
        labels (`list[torch.LongTensor]`): per image, `(n,)` class ids in the image's task.
        proposals (`list[torch.FloatTensor]`): per image, the RPN's oriented proposals `(m, 5)`.
        task_ids (`torch.LongTensor` of shape `(batch_size,)`): the task of every image.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    boxes: list[torch.FloatTensor] | None = None
    scores: list[torch.FloatTensor] | None = None
    labels: list[torch.LongTensor] | None = None
    proposals: list[torch.FloatTensor] | None = None
    task_ids: torch.LongTensor | None = None


class S5DetectionFPN(nn.Module):
    """FPN over the neck's four maps (strides 4-32): 1x1 laterals, nearest top-down sums, 3x3 outputs, and
    extra levels by max pooling (kernel 1, stride 2) of the coarsest output."""

    def __init__(self, config: S5DetectionConfig):
        super().__init__()
        ch = config.fpn_channels
        self.num_levels = config.fpn_num_levels
        self.lateral_convs = nn.ModuleList(_with_init(nn.Conv2d(config.hidden_size, ch, 1), "xavier") for _ in range(4))
        self.fpn_convs = nn.ModuleList(_with_init(nn.Conv2d(ch, ch, 3, padding=1), "xavier") for _ in range(4))

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(m) for conv, m in zip(self.lateral_convs, maps)]
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_levels:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class S5OrientedRPNHead(nn.Module):
    """3x3 conv + ReLU shared over levels; per anchor one objectness logit and 6 midpoint-offset deltas."""

    def __init__(self, config: S5DetectionConfig):
        super().__init__()
        ch, anchors = config.fpn_channels, config.num_anchors
        self.conv = _with_init(nn.Conv2d(ch, ch, 3, padding=1), 0.01)
        self.cls = _with_init(nn.Conv2d(ch, anchors, 1), 0.01)
        self.reg = _with_init(nn.Conv2d(ch, anchors * 6, 1), 0.01)

    def forward(self, maps: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for m in maps:
            x = F.relu(self.conv(m))
            b = m.shape[0]
            logits.append(self.cls(x).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.reg(x).permute(0, 2, 3, 1).reshape(b, -1, 6))
        return logits, deltas


class S5OrientedRoIHead(nn.Module):
    """Two shared FCs on the pooled RoI features; classes (+1 background, last) and 5 class-agnostic deltas."""

    def __init__(self, config: S5DetectionConfig, num_classes: int):
        super().__init__()
        size = config.roi_output_size
        self.fc1 = _with_init(nn.Linear(config.fpn_channels * size * size, config.roi_fc_dim), "xavier")
        self.fc2 = _with_init(nn.Linear(config.roi_fc_dim, config.roi_fc_dim), "xavier")
        self.cls = _with_init(nn.Linear(config.roi_fc_dim, num_classes + 1), 0.01)
        self.reg = _with_init(nn.Linear(config.roi_fc_dim, 5), 0.001)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(pooled.flatten(1)))))
        return self.cls(x), self.reg(x)


class S5DetectionHeads(nn.Module):
    """The head stack of one task."""

    def __init__(self, config: S5DetectionConfig, num_classes: int):
        super().__init__()
        self.fpn = S5DetectionFPN(config)
        self.rpn = S5OrientedRPNHead(config)
        self.roi = S5OrientedRoIHead(config, num_classes)


class S5DetectionPreTrainedModel(S5PreTrainedModel):
    config: S5DetectionConfig
    config_class = S5DetectionConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The intended mmdet initialisation of the heads (the official code misses it through a naming
        # bug): Xavier-uniform FPN convs and shared FCs, N(0, 0.01) RPN and classifier, N(0, 0.001) box regression.
        # Each head layer carries its rule (`_detection_init`, set in its constructor), because transformers
        # initialises every parameter once, leaf modules first.
        rule = getattr(module, "_detection_init", None)
        if rule is None:
            super()._init_weights(module)
            return
        if rule == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.normal_(module.weight, std=rule)
        nn.init.zeros_(module.bias)


def _with_init(layer: nn.Module, rule: str | float) -> nn.Module:
    layer._detection_init = rule
    return layer


def _smooth_l1(diff: torch.Tensor, beta: float) -> torch.Tensor:
    diff = diff.abs()
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta) if beta > 0 else diff


class S5ForOrientedDetection(S5DetectionPreTrainedModel):
    """S5 backbone + one Oriented R-CNN head stack per task.

    `forward(pixel_values, task, targets)`: `targets` is a list with one dict per image, `boxes` `(n, 5)`
    `(cx, cy, w, h, angle)` in input pixels and `labels` `(n,)` class ids of the image's task. In training mode
    with targets the output carries the losses; in eval mode the detections.
    """

    def __init__(self, config: S5DetectionConfig):
        super().__init__(config)
        self.s5 = S5Model(config)
        self.heads = nn.ModuleList(S5DetectionHeads(config, t.num_labels) for t in config.tasks)
        self._anchor_cache: dict = {}
        self.post_init()

    # ---- anchors -----------------------------------------------------------------------------------------------
    def _anchors(self, sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        key = (tuple(sizes), str(device))
        if key not in self._anchor_cache:
            self._anchor_cache = {key: [
                grid_anchors(size, stride, self.config.anchor_scales, self.config.anchor_ratios, device)
                for size, stride in zip(sizes, self.config.anchor_strides)
            ]}
        return self._anchor_cache[key]

    # ---- RPN -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _proposals(self, anchors, logits, deltas, image: int) -> torch.Tensor:
        cfg = self.config
        boxes, scores, levels = [], [], []
        for level, (a, l, d) in enumerate(zip(anchors, logits, deltas)):
            s = l[image].float().sigmoid()
            top = s.topk(min(cfg.rpn_pre_nms, s.numel())).indices
            decoded = midpoint_decode(a[top], d[image][top].float())
            ok = (decoded[:, 2] > 1e-3) & (decoded[:, 3] > 1e-3)
            boxes.append(decoded[ok])
            scores.append(s[top][ok])
            levels.append(torch.full((int(ok.sum()),), level, device=s.device))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        keep = batched_hbb_nms(obb_to_hbb(boxes), scores, levels, cfg.rpn_nms_iou)[: cfg.rpn_max_proposals]
        return boxes[keep]

    def _rpn_loss(self, anchors, logits, deltas, targets, image_sizes):
        cfg = self.config
        flat_anchors = torch.cat(anchors)
        all_logits = torch.cat(logits, dim=1)
        all_deltas = torch.cat(deltas, dim=1)
        cls_terms, reg_terms, count = [], [], 0
        for i, target in enumerate(targets):
            h, w = image_sizes[i]
            inside = ((flat_anchors[:, 0] >= 0) & (flat_anchors[:, 1] >= 0)
                      & (flat_anchors[:, 2] <= w) & (flat_anchors[:, 3] <= h))
            idx = inside.nonzero(as_tuple=True)[0]
            gt = target["boxes"].to(flat_anchors)
            overlaps = hbb_iou(obb_to_hbb(gt), flat_anchors[idx])
            assign = max_iou_assign(overlaps, cfg.rpn_pos_iou, cfg.rpn_neg_iou, cfg.rpn_min_pos_iou, True)
            pos, neg = random_sample(assign.gt_indices, cfg.rpn_num_samples, cfg.rpn_pos_fraction)
            sampled = torch.cat([idx[pos], idx[neg]])
            label = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())]).to(all_logits.device)
            cls_terms.append(F.binary_cross_entropy_with_logits(all_logits[i, sampled].float(), label, reduction="sum"))
            if pos.numel():
                target_deltas = midpoint_encode(flat_anchors[idx[pos]], gt[assign.gt_indices[pos] - 1])
                reg_terms.append(_smooth_l1(all_deltas[i, idx[pos]].float() - target_deltas, cfg.rpn_smooth_l1_beta).sum())
            count += sampled.numel()
        norm = max(count, 1)
        zero = all_logits.sum() * 0.0
        return sum(cls_terms, zero) / norm, sum(reg_terms, zero + all_deltas.sum() * 0.0) / norm

    # ---- RoI head ------------------------------------------------------------------------------------------------
    def _roi_targets(self, proposals: list[torch.Tensor], targets: list[dict], num_classes: int):
        cfg = self.config
        rois, labels, deltas = [], [], []
        for i, (props, target) in enumerate(zip(proposals, targets)):
            gt = target["boxes"].to(props)
            gt_labels = target["labels"].to(props.device).long()
            candidates = torch.cat([gt, props])  # ground truths join the proposals (they are perfect proposals)
            assign = max_iou_assign(obb_iou(gt, candidates), cfg.roi_pos_iou, cfg.roi_pos_iou, cfg.roi_pos_iou, False)
            pos, neg = random_sample(assign.gt_indices, cfg.roi_num_samples, cfg.roi_pos_fraction)
            chosen = torch.cat([pos, neg])
            matched = assign.gt_indices[pos] - 1
            rois.append(torch.cat([torch.full((chosen.numel(), 1), i, dtype=props.dtype, device=props.device),
                                   candidates[chosen]], dim=1))
            labels.append(torch.cat([gt_labels[matched], gt_labels.new_full((neg.numel(),), num_classes)]))
            d = props.new_zeros(chosen.numel(), 5)
            if pos.numel():
                d[: pos.numel()] = delta_encode(candidates[pos], gt[matched])
            deltas.append(d)
        return torch.cat(rois), torch.cat(labels), torch.cat(deltas)

    def _detect(self, heads: S5DetectionHeads, fpn, proposals: list[torch.Tensor], num_classes: int):
        cfg = self.config
        out_boxes, out_scores, out_labels = [], [], []
        for i, props in enumerate(proposals):
            if props.shape[0] == 0:
                out_boxes.append(props.new_zeros(0, 5))
                out_scores.append(props.new_zeros(0))
                out_labels.append(torch.zeros(0, dtype=torch.long, device=props.device))
                continue
            rois = torch.cat([props.new_full((props.shape[0], 1), i), props], dim=1)
            pooled = extract_roi_features(fpn[:4], cfg.anchor_strides[:4], rois.float(),
                                          cfg.roi_output_size, cfg.roi_sampling_ratio, tuple(cfg.roi_enlarge))
            logits, deltas = heads.roi(pooled)
            probs = logits.float().softmax(-1)[:, :num_classes]
            boxes = delta_decode(props, deltas.float())
            # Box regression is class-agnostic, so every class's candidates are rows of the same boxes: one IoU
            # matrix serves the per-class NMS of all classes.
            passing = probs > cfg.test_score_threshold
            used = passing.any(1).nonzero(as_tuple=True)[0]
            iou = obb_iou(boxes[used], boxes[used])
            rows, scores, classes = [], [], []
            for c in range(num_classes):
                members = passing[used, c].nonzero(as_tuple=True)[0]
                kept = members[nms_from_iou(iou[members][:, members], probs[used[members], c], cfg.test_nms_iou)]
                rows.append(used[kept])
                scores.append(probs[used[kept], c])
                classes.append(torch.full_like(kept, c))
            rows, scores, classes = torch.cat(rows), torch.cat(scores), torch.cat(classes)
            top = scores.argsort(descending=True, stable=True)[: cfg.test_max_detections]
            out_boxes.append(boxes[rows[top]])
            out_scores.append(scores[top])
            out_labels.append(classes[top])
        return out_boxes, out_scores, out_labels

    # ---- forward ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        task: str | Sequence[str] | torch.Tensor | None = None,
        targets: list[dict[str, torch.Tensor]] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> S5OrientedDetectionOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): normalised, padded images.
        task (`str`, `list[str]` or `torch.LongTensor`, *optional*): the dataset of every image (expert and heads).
        targets (`list[dict]`, *optional*): per image `boxes` `(n, 5)` and `labels` `(n,)`; gives the losses.
        image_sizes (`list[tuple[int, int]]`, *optional*): unpadded `(height, width)` of every image; anchors
            crossing it are ignored in training. Defaults to the padded size.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        batch = pixel_values.shape[0]
        task_ids = resolve_task_ids(self.config, task, batch, pixel_values.device)
        if targets is not None:
            if len(targets) != batch:
                raise ValueError(f"Got {len(targets)} targets for {batch} images.")
            for i, t in enumerate(targets):
                if "boxes" not in t or "labels" not in t:
                    raise ValueError(f"targets[{i}] needs 'boxes' (n, 5) and 'labels' (n,), got keys {sorted(t)}.")
                if t["boxes"].ndim != 2 or t["boxes"].shape[-1] != 5 or t["labels"].shape[0] != t["boxes"].shape[0]:
                    raise ValueError(f"targets[{i}]: boxes must be (n, 5) (cx, cy, w, h, angle) with one label each, "
                                     f"got boxes {tuple(t['boxes'].shape)} and labels {tuple(t['labels'].shape)}.")
                classes = self.config.tasks[int(task_ids[i])].num_labels
                bad = t["labels"][(t["labels"] < 0) | (t["labels"] >= classes)]
                if bad.numel():
                    raise ValueError(f"targets[{i}]: label {int(bad[0])} is outside the {classes} classes of task "
                                     f"{self.config.tasks[int(task_ids[i])].name!r}.")
        if image_sizes is None:
            image_sizes = [tuple(pixel_values.shape[-2:])] * batch
        features = self.s5(pixel_values, task=task_ids, return_dict=True).feature_maps

        routing = TaskRouting(task_ids)
        loss_dict: dict[str, torch.Tensor] = {}
        boxes: list = [None] * batch
        scores: list = [None] * batch
        labels: list = [None] * batch
        proposals_out: list = [None] * batch
        for t, rows in routing.groups:
            spec = self.config.tasks[t]
            num_classes = spec.num_labels
            index = list(range(batch)) if rows is None else rows.tolist()
            heads = self.heads[t]
            maps = features if rows is None else [f.index_select(0, rows) for f in features]
            fpn = heads.fpn(maps)
            logits, deltas = heads.rpn(fpn)
            anchors = self._anchors([tuple(f.shape[-2:]) for f in fpn], pixel_values.device)
            proposals = [self._proposals(anchors, logits, deltas, j) for j in range(len(index))]
            for j, i in enumerate(index):
                proposals_out[i] = proposals[j]
            if targets is not None:
                task_targets = [targets[i] for i in index]
                rpn_cls, rpn_reg = self._rpn_loss(anchors, logits, deltas, task_targets, [image_sizes[i] for i in index])
                rois, roi_labels, roi_deltas = self._roi_targets(proposals, task_targets, num_classes)
                pooled = extract_roi_features(fpn[:4], self.config.anchor_strides[:4], rois.float(),
                                              self.config.roi_output_size, self.config.roi_sampling_ratio,
                                              tuple(self.config.roi_enlarge))
                cls_logits, reg = heads.roi(pooled)
                positive = roi_labels < num_classes
                norm = max(roi_labels.numel(), 1)
                roi_cls = F.cross_entropy(cls_logits.float(), roi_labels, reduction="sum") / norm
                roi_reg = _smooth_l1(reg[positive].float() - roi_deltas[positive], self.config.roi_smooth_l1_beta).sum() / norm
                name = spec.name
                loss_dict.update({f"{name}/rpn_cls": rpn_cls, f"{name}/rpn_box": rpn_reg,
                                  f"{name}/roi_cls": roi_cls, f"{name}/roi_box": roi_reg})
            if not self.training:
                det = self._detect(heads, fpn, proposals, num_classes)
                for j, i in enumerate(index):
                    boxes[i], scores[i], labels[i] = det[0][j], det[1][j], det[2][j]
        if self.training:
            empty = pixel_values.new_zeros(0, 5)
            boxes = [empty] * batch
            scores = [pixel_values.new_zeros(0)] * batch
            labels = [torch.zeros(0, dtype=torch.long, device=pixel_values.device)] * batch
        loss = sum(loss_dict.values()) if loss_dict else None
        output = S5OrientedDetectionOutput(loss=loss, loss_dict=loss_dict or None, boxes=boxes, scores=scores,
                                           labels=labels, proposals=proposals_out, task_ids=task_ids)
        return output if return_dict else output.to_tuple()

    # ---- initialisation from a segmentation (S4P) model ------------------------------------------------------------
    @classmethod
    def from_single_task(cls, model: S5PreTrainedModel, config: S5DetectionConfig) -> S5ForOrientedDetection:
        """Detection model whose backbone starts from a single-task S5 model (S4P): every expert = the
        tail `part_features` rows of the pretrained fc2, the shared part = the leading rows, the neck copied, the
        position table bicubically resized to the detection image size; the heads start fresh."""
        source_model = getattr(model, "s5", model)
        src_cfg = source_model.config
        if src_cfg.use_experts:
            raise ValueError(f"from_single_task needs a model without experts, got tasks {src_cfg.task_names}.")
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size", "num_channels")
        diff = {k: (getattr(src_cfg, k), getattr(config, k)) for k in keys if getattr(src_cfg, k) != getattr(config, k)}
        if diff:
            raise ValueError(f"Backbone configurations differ: {diff} (source, target).")
        new = cls(config)
        split = config.hidden_size - config.part_features if config.use_experts else config.hidden_size
        target = {}
        for key, value in source_model.state_dict().items():
            if ".mlp.fc2." in key and config.use_experts:
                target[key] = value[:split]
                for e in range(len(config.tasks)):
                    target[key.replace(".mlp.fc2.", f".mlp.experts.{e}.")] = value[split:]
            elif key == "embeddings.position_embeddings":
                grid = config.image_size // config.patch_size
                src_grid = int(math.isqrt(value.shape[1]))
                table = value.reshape(1, src_grid, src_grid, -1).permute(0, 3, 1, 2).float()
                table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
                target[key] = table.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(value.dtype)
            else:
                target[key] = value
        new.s5.load_state_dict(target, strict=True)
        return new


# The object-detection pipelines check the model's class name against this table (not against the registered Auto
# classes) and log an error otherwise; here rather than in s5_hf/__init__.py so that it holds for remote code too.
MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(S5DetectionConfig.model_type, S5ForOrientedDetection.__name__)

__all__ = ["S5ForOrientedDetection", "S5OrientedDetectionOutput", "S5DetectionPreTrainedModel"]
