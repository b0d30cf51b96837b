"""S5 model configuration."""

from __future__ import annotations

import re
from typing import Any

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .label_sets import LABEL_SETS

# Backbone presets of the paper (spec section 1.1). `out_indices` are transformers stage indices:
# stage i is the output of block i-1, so ViT-B's "blocks 3, 5, 7, 11" are stages 4, 6, 8, 12.
PRESETS: dict[str, dict[str, Any]] = {
    "vit-b": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "out_indices": [4, 6, 8, 12]},
    "vit-l": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "out_indices": [8, 12, 16, 24]},
    "vit-h": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "out_indices": [16, 24, 28, 32]},
}

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def _normalise_task(task: str | dict[str, Any]) -> dict[str, Any]:
    """A task is a dataset head: a name, its classes and the label id its loss and metrics ignore."""
    if isinstance(task, str):
        key = task.lower()
        if key not in LABEL_SETS:
            raise ValueError(
                f"Unknown task {task!r}: pass a known dataset name ({', '.join(sorted(LABEL_SETS))}) or a dict "
                "with 'name', 'id2label' and optionally 'ignore_index'."
            )
        label_set = LABEL_SETS[key]
        return {"name": key, "id2label": label_set.id2label, "ignore_index": label_set.ignore_index}
    if not isinstance(task, dict) or "name" not in task or "id2label" not in task:
        raise ValueError(f"A task must be a known dataset name or a dict with 'name' and 'id2label', got {task!r}.")
    id2label = {int(k): str(v) for k, v in task["id2label"].items()}
    if sorted(id2label) != list(range(len(id2label))) or not id2label:
        raise ValueError(f"Task {task['name']!r}: id2label keys must be 0..K-1, got {sorted(id2label)}.")
    return {"name": str(task["name"]), "id2label": id2label, "ignore_index": int(task.get("ignore_index", 255))}


class S5Config(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of the S5 models: a plain ViT backbone with a multi-scale neck, an optional mixture of
    per-dataset FFN experts (MoE-MDF) and one UperNet decoder plus classifier per task (dataset).

    A model with one task is the single-task S4P model (no experts). With several tasks and
    `part_features > 0`, every block's FFN has a shared part and one expert per task producing its last
    `part_features` channels; `part_features=0` gives the "shared backbone, one decoder per task" variant.

    Args:
        hidden_size (`int`, defaults to 768): width of the ViT.
        num_hidden_layers (`int`, defaults to 12): number of transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block.
        mlp_ratio (`float`, defaults to 4.0): FFN hidden size / hidden size.
        hidden_act (`str`, defaults to `"gelu"`): FFN activation.
        image_size (`int`, defaults to 512): size the position embeddings are learned for; other sizes
            (multiples of `patch_size`) interpolate them bicubically.
        patch_size (`int`, defaults to 16): patch embedding kernel and stride.
        num_channels (`int`, defaults to 3): input bands (RGB).
        qkv_bias (`bool`, defaults to `True`): bias on the query/key/value projections.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth, linear over depth, on the FFN branch
            only (as the official code applies it).
        attention_probs_dropout_prob (`float`, defaults to 0.0): attention dropout.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the block LayerNorms.
        neck_layer_norm_eps (`float`, defaults to 1e-6): epsilon of the neck's channel LayerNorm.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialisation.
        out_indices (`list[int]`, defaults to `[4, 6, 8, 12]`): the four stages (block i-1 for stage i)
            whose outputs feed the neck.
        decoder_hidden_size (`int`, defaults to 256): UperNet channels.
        pool_scales (`list[int]`, defaults to `[1, 2, 3, 6]`): pyramid pooling scales.
        classifier_dropout (`float`, defaults to 0.1): Dropout2d before each classifier.
        tasks (`list[str | dict]`, defaults to `["isaid"]`): the dataset heads, in expert order. A known
            dataset name (see `s5_hf.label_sets`) or a dict with `name`, `id2label` and `ignore_index`.
        part_features (`int`, defaults to 256): output channels of each per-task FFN expert.
        default_task (`str`, *optional*): the task used when `forward` gets no `task`; defaults to the first.
            `id2label` of the configuration mirrors this task, so pipelines label masks correctly.
        logits_align_corners (`bool`, defaults to `True`): the official model upsamples the logits to the
            input size with `align_corners=True`; kept for exact parity.
    """

    model_type = "s5"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    hidden_act: str = "gelu"
    image_size: int = 512
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-5
    neck_layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    decoder_hidden_size: int = 256
    pool_scales: list[int] | tuple[int, ...] = (1, 2, 3, 6)
    classifier_dropout: float = 0.1
    tasks: list[Any] | None = None
    part_features: int = 256
    default_task: str | None = None
    logits_align_corners: bool = True

    def __post_init__(self, **kwargs):
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        out_indices = kwargs.pop("out_indices", None)
        out_features = kwargs.pop("out_features", None)
        if out_indices is None and out_features is None:
            out_indices = self._default_out_indices()
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

        self.tasks = [_normalise_task(t) for t in (self.tasks or ["isaid"])]
        names = [t["name"] for t in self.tasks]
        for name in names:
            if not _TASK_NAME.match(name):
                raise ValueError(f"Task name {name!r} must start with a letter and use only letters, digits, _ or -.")
        if len(set(names)) != len(names):
            raise ValueError(f"Task names must be unique, got {names}.")
        if self.default_task is None:
            self.default_task = names[0]
        elif self.default_task not in names:
            raise ValueError(f"default_task {self.default_task!r} is not one of the tasks {names}.")
        self.pool_scales = list(self.pool_scales)
        kwargs.pop("id2label", None)
        kwargs.pop("label2id", None)
        kwargs.pop("num_labels", None)
        super().__post_init__(**kwargs)
        self._sync_labels()
        self._validate_shapes()

    def _default_out_indices(self) -> list[int]:
        for preset in PRESETS.values():
            if preset["num_hidden_layers"] == self.num_hidden_layers:
                return list(preset["out_indices"])
        # Evenly spaced stages ending at the last block, for custom depths.
        n = self.num_hidden_layers
        return sorted({max(1, round(n * f)) for f in (0.25, 0.5, 0.75)} | {n})

    def _sync_labels(self) -> None:
        id2label = self.get_task(self.default_task)["id2label"]
        self.id2label = dict(id2label)
        self.label2id = {v: k for k, v in id2label.items()}

    def _validate_shapes(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})."
            )
        if len(self.out_indices) != 4:
            raise ValueError(f"The S5 neck needs exactly four feature stages, got out_indices={self.out_indices}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size}).")
        if self.use_experts and not 0 < self.part_features < self.hidden_size:
            raise ValueError(f"part_features must be in (0, hidden_size={self.hidden_size}), got {self.part_features}.")

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> S5Config:
        """Build the configuration of a paper backbone: `"vit-b"`, `"vit-l"` or `"vit-h"`."""
        key = preset.lower().replace("_", "-")
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[key], **kwargs})

    # ---- tasks -------------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    @property
    def use_experts(self) -> bool:
        return len(self.tasks) > 1 and self.part_features > 0

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def task_index(self, name: str) -> int:
        """Index of task `name` (its expert and decoder); unknown names raise a ValueError listing the valid ones."""
        names = self.task_names
        if name not in names:
            lowered = name.lower() if isinstance(name, str) else name
            if lowered in names:
                return names.index(lowered)
            raise ValueError(f"Unknown task {name!r}. This model's tasks are: {', '.join(names)}.")
        return names.index(name)

    def get_task(self, name: str) -> dict[str, Any]:
        return self.tasks[self.task_index(name)]

    def set_default_task(self, name: str) -> None:
        """Make `name` the task used when no `task` is given (pipelines), and mirror its labels in `id2label`."""
        self.default_task = self.tasks[self.task_index(name)]["name"]
        self._sync_labels()


__all__ = ["S5Config", "PRESETS"]
