"""S5 model configuration."""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .label_sets import LABEL_SETS

# Backbone presets of the paper (ViT-B/L/H). `out_indices` are transformers stage indices:
# stage i is the output of block i-1, so ViT-B's "blocks 3, 5, 7, 11" are stages 4, 6, 8, 12.
PRESETS: dict[str, dict[str, Any]] = {
    "vit-b": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "out_indices": [4, 6, 8, 12]},
    "vit-l": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "out_indices": [8, 12, 16, 24]},
    "vit-h": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "out_indices": [16, 24, 28, 32]},
}

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class S5Task:
    """One dataset head: its name, its classes (`id2label`, ids 0..K-1) and the label id its loss and metrics ignore.

    `S5Config.tasks` holds these in expert order; `config.json` stores them as plain dicts (`to_dict`).
    """

    name: str
    id2label: dict[int, str]
    ignore_index: int = 255

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def class_names(self) -> list[str]:
        return [self.id2label[k] for k in range(len(self.id2label))]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "id2label": dict(self.id2label), "ignore_index": self.ignore_index}

    @classmethod
    def parse(cls, task: str | Mapping[str, Any] | S5Task) -> S5Task:
        """A known dataset name, a dict `{"name", "id2label"[, "ignore_index"]}` or a task, checked."""
        if isinstance(task, S5Task):
            task = task.to_dict()
        if isinstance(task, str):
            key = task.lower()
            if key not in LABEL_SETS:
                raise ValueError(
                    f"Unknown task {task!r}: pass a known dataset name ({', '.join(sorted(LABEL_SETS))}) or a dict "
                    "with 'name', 'id2label' and optionally 'ignore_index'."
                )
            label_set = LABEL_SETS[key]
            return cls(key, dict(label_set.id2label), label_set.ignore_index)
        if not isinstance(task, Mapping) or "name" not in task or "id2label" not in task:
            raise ValueError(f"A task must be a known dataset name or a dict with 'name' and 'id2label', got {task!r}.")
        id2label = {int(k): str(v) for k, v in task["id2label"].items()}
        if sorted(id2label) != list(range(len(id2label))) or not id2label:
            raise ValueError(f"Task {task['name']!r}: id2label keys must be 0..K-1, got {sorted(id2label)}.")
        ignore_index = task.get("ignore_index", 255)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise ValueError(f"Task {task['name']!r}: ignore_index must be an integer, got {ignore_index!r}.")
        ignore_index = int(ignore_index)
        if 0 <= ignore_index < len(id2label):
            # The loss and the metrics would silently drop every pixel of that class.
            raise ValueError(
                f"Task {task['name']!r}: ignore_index {ignore_index} is the id of the class {id2label[ignore_index]!r} "
                f"(classes are 0..{len(id2label) - 1}); use an id outside the classes, e.g. 255."
            )
        return cls(str(task["name"]), id2label, ignore_index)


# Configuration fields that change the function a set of weights computes (beyond the tasks, compared separately).
# Training-only settings (dropout, drop path, initialisation) and `default_task` are deliberately absent.
BACKBONE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "hidden_act", "image_size", "patch_size",
    "num_channels", "qkv_bias", "layer_norm_eps", "neck_layer_norm_eps", "out_indices",
)
DECODER_FIELDS = ("decoder_hidden_size", "pool_scales", "logits_align_corners")


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
        out_indices (`list[int]`, defaults to `[4, 6, 8, 12]`): the four stages (block i-1 for stage i, so
            1..num_hidden_layers) whose outputs feed the neck.
        decoder_hidden_size (`int`, defaults to 256): UperNet channels.
        pool_scales (`list[int]`, defaults to `[1, 2, 3, 6]`): pyramid pooling scales.
        classifier_dropout (`float`, defaults to 0.1): Dropout2d before each classifier.
        tasks (`list[str | dict]`, defaults to `["isaid"]`): the dataset heads, in expert order. A known
            dataset name (see `s5_hf.label_sets`) or a dict with `name`, `id2label` and `ignore_index` (an id
            outside the classes; default 255).
        part_features (`int`, defaults to 256): output channels of each per-task FFN expert; 0 = no experts,
            otherwise below `hidden_size` (only used with several tasks).
        default_task (`str`, *optional*): the task used when `forward` gets no `task`; defaults to the first.
            `id2label` of the configuration mirrors this task, so pipelines label masks correctly.
        logits_align_corners (`bool`, defaults to `True`): the official model upsamples the logits to the
            input size with `align_corners=True`; kept for exact parity.

    Invalid values (sizes below 1, an empty task list, 0-based stages, ...) raise a `ValueError` naming the field.
    `architecture_differences(other)` lists the fields in which two configurations compute different functions.
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
        self._validate_sizes()
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        out_indices = kwargs.pop("out_indices", None)
        out_features = kwargs.pop("out_features", None)
        if out_indices is None and out_features is None:
            out_indices = self._default_out_indices()
        if out_indices is not None:
            self._validate_out_indices(out_indices)
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

        tasks_given = self.tasks is not None
        if isinstance(self.tasks, (str, Mapping, S5Task)):
            self.tasks = [self.tasks]
        if tasks_given and not self.tasks:
            raise ValueError("tasks is empty: list at least one task (a dataset name or a dict), e.g. tasks=['isaid'].")
        self.tasks = [S5Task.parse(t) for t in (self.tasks if tasks_given else ["isaid"])]
        names = [t.name for t in self.tasks]
        for name in names:
            if not _TASK_NAME.match(name):
                raise ValueError(f"Task name {name!r} must start with a letter and use only letters, digits, _ or -.")
        if len(set(names)) != len(names):
            raise ValueError(f"Task names must be unique, got {names}.")
        if self.default_task is None:
            self.default_task = names[0]
        elif self.default_task not in names:
            hint = "" if tasks_given else " (tasks was not given, so it defaults to ['isaid']: pass tasks=[...])"
            raise ValueError(f"default_task {self.default_task!r} is not one of the tasks {names}{hint}.")
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
        id2label = self.get_task(self.default_task).id2label
        self.id2label = dict(id2label)
        self.label2id = {v: k for k, v in id2label.items()}

    def _validate_sizes(self) -> None:
        """Sizes must be positive integers (checked before anything divides by them)."""
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
                     "num_channels", "decoder_hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        part = self.part_features
        if isinstance(part, bool) or not isinstance(part, numbers.Integral) or part < 0:
            raise ValueError(f"part_features must be an integer >= 0 (0 = no experts), got {part!r}.")
        if not isinstance(self.mlp_ratio, (int, float)) or int(self.hidden_size * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio!r}.")
        scales = list(self.pool_scales) if isinstance(self.pool_scales, (list, tuple)) else None
        if not scales or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in scales):
            raise ValueError(f"pool_scales must be a non-empty list of positive integers, got {self.pool_scales!r}.")
        for name in ("drop_path_rate", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}.")
        for name in ("layer_norm_eps", "neck_layer_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")

    def _validate_out_indices(self, out_indices) -> None:
        n = self.num_hidden_layers
        if not isinstance(out_indices, (list, tuple)) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= n for i in out_indices
        ):
            raise ValueError(
                f"out_indices must be stage numbers in 1..{n} (stage i is the output of block i-1; 0 would be the "
                f"patch embeddings, which the neck does not take), got {out_indices!r}."
            )

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

    def architecture_differences(self, other: S5Config | dict, tasks: bool = True) -> dict[str, tuple[Any, Any]]:
        """The fields in which `other` computes a different function from this configuration with the same weights.

        Returns `{field: (this value, other value)}`, empty when the two are interchangeable. Compared: every
        backbone and decoder field that changes the forward pass (shapes, heads, LayerNorm epsilons, activation,
        stages, pool scales, ...) and, with `tasks=True`, the task list (names and class counts, in expert order)
        and the expert width. Dropout, drop path, initialisation and `default_task` are not compared. `other` may
        be a configuration dictionary (e.g. a saved `config.json`).
        """
        # A Mapping is a saved config.json; anything else is an S5 configuration (possibly the class of a remote-code
        # copy of this file, which is another class object, so no isinstance check).
        if isinstance(other, Mapping):
            other = S5Config.from_dict({k: v for k, v in other.items() if k not in ("auto_map", "model_type")})
        fields = BACKBONE_FIELDS + DECODER_FIELDS
        diff = {k: (getattr(self, k), getattr(other, k)) for k in fields
                if _plain(getattr(self, k)) != _plain(getattr(other, k))}
        if tasks:
            ours = [(t.name, t.num_labels) for t in self.tasks]
            theirs = [(t.name, t.num_labels) for t in other.tasks]
            if ours != theirs:
                diff["tasks (name, classes)"] = (ours, theirs)
            experts = (self.part_features if self.use_experts else 0, other.part_features if other.use_experts else 0)
            if experts[0] != experts[1]:
                diff["part_features"] = experts
        return diff

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
        return [t.name for t in self.tasks]

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

    def get_task(self, name: str) -> S5Task:
        return self.tasks[self.task_index(name)]

    def set_default_task(self, name: str) -> None:
        """Make `name` the task used when no `task` is given (pipelines), and mirror its labels in `id2label`."""
        self.default_task = self.get_task(name).name
        self._sync_labels()

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["tasks"] = [task.to_dict() for task in self.tasks]
        return output


def _plain(value: Any) -> Any:
    # Lists and tuples compare equal when their items do (a JSON round trip turns tuples into lists).
    return list(value) if isinstance(value, tuple) else value


__all__ = ["S5Config", "S5Task", "PRESETS", "BACKBONE_FIELDS", "DECODER_FIELDS"]
