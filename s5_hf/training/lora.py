"""LoRA multi-dataset fine-tuning: one PEFT LoRA adapter per dataset on a shared, frozen S5 backbone.

The PEFT alternative to the MoE experts of MoE-MDF (`training/finetune_mdf.py --lora`). The model is an
`S5ForSemanticSegmentation` with one decoder and classifier per task and no experts (`part_features=0`). Every
task gets a LoRA adapter named after it on the linear layers of the ViT encoder (by default the attention
`q_proj`, `k_proj`, `v_proj`, `o_proj` and the FFN `fc1`, `fc2` of `s5.encoder`); the backbone's own weights
(embeddings, encoder, neck) are frozen, the adapters, decoders and classifiers are trained.

Design: the whole segmentation model is wrapped with PEFT's public `get_peft_model` / `add_adapter` (a plain
`PeftModel`, whose forward passes `task=` through untouched), with a target regex confined to `s5.encoder`, so
the saved adapters load with the ordinary `PeftModel.from_pretrained(S5ForSemanticSegmentation, ...)`.
`S5LoRAModel` is a thin module around that `PeftModel` with the S5 call signature: its forward activates the
adapter of `task` and re-enables gradients on all adapters (`set_adapter` freezes the inactive ones), so a
training step is one forward per dataset, each with its adapter, and one backward of the summed loss; every
adapter's parameters keep `requires_grad=True` at all times, which DDP needs (each adapter gets a gradient
every step). A batch mixing tasks is refused: only one adapter can be active per forward. Gradient
checkpointing is refused too: the recomputation in the backward would run with the adapter of the last forward.

Saved layout (`S5LoRAModel.save_pretrained(folder)`; the training script writes it to `<output_dir>/model`,
`best` and each checkpoint's `model/`, and the adapters once more to `<output_dir>/lora/`):

    folder/                    `save_pretrained` of the plain S5 model (part_features=0): the original backbone
                               weights, the trained decoders and classifiers, config (and processor)
    folder/lora/<task>/        PEFT adapter of each task: adapter_config.json, adapter_model.safetensors

Loading with PEFT alone:

    base = S5ForSemanticSegmentation.from_pretrained(folder)
    model = PeftModel.from_pretrained(base, f"{folder}/lora/vaihingen", adapter_name="vaihingen")
    model.load_adapter(f"{folder}/lora/potsdam", adapter_name="potsdam")
    model.set_adapter("potsdam"); logits = model(pixel_values, task="potsdam").logits

or `S5LoRAModel.from_pretrained(folder)`, which loads every adapter and picks it from `task` by itself.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..modeling_s5 import S5ForSemanticSegmentation, resolve_task_ids

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
ENCODER = "s5.encoder"
ADAPTER_FOLDER = "lora"


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a target name: the module's full name, or a suffix of it at a dot."""
    return name == target or name.endswith("." + target)


def lora_config(model: S5ForSemanticSegmentation, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
                r: int = 16, alpha: float = 32, dropout: float = 0.0) -> LoraConfig:
    """A `LoraConfig` on the encoder's linear layers whose names end with one of `target_modules` (e.g.
    `q_proj`, `mlp.fc1`); a name matching no linear layer of the encoder is a ValueError naming the valid ones."""
    targets = [t.strip() for t in target_modules if t.strip()]
    if not targets:
        raise ValueError("LoRA needs at least one target module.")
    linears = [f"{ENCODER}.{n}" for n, m in model.s5.encoder.named_modules() if isinstance(m, nn.Linear)]
    unknown = [t for t in targets if not any(_matches(n, t) for n in linears)]
    if unknown:
        names = sorted({n.split(".")[-1] for n in linears})
        raise ValueError(f"LoRA target modules {unknown} match no linear layer of the backbone encoder "
                         f"({ENCODER}); its linear layers are named {names}.")
    if r < 1:
        raise ValueError(f"The LoRA rank must be at least 1, got {r}.")
    # PEFT full-matches a regex against each module name: the names under the encoder that `_matches` accepts,
    # and nothing outside it (neck, decoders).
    pattern = rf"(?={re.escape(ENCODER)}\.)(?:.*\.)?(?:{'|'.join(re.escape(t) for t in targets)})"
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")


class S5LoRAModel(nn.Module):
    """An S5 segmentation model with one LoRA adapter per task; `forward(pixel_values, task=...)` as S5's, using
    the adapter of `task`. Build it with `add_lora_adapters` or load it with `from_pretrained`."""

    def __init__(self, peft_model: PeftModel, trainable: bool = True):
        super().__init__()
        self.peft_model = peft_model
        self.config = self.base_model.config
        self.trainable_adapters = trainable
        missing = sorted(set(self.config.task_names) - set(peft_model.peft_config))
        if missing:
            raise ValueError(f"Tasks {missing} have no LoRA adapter (adapters: {sorted(peft_model.peft_config)}).")

    @property
    def base_model(self) -> S5ForSemanticSegmentation:
        """The S5 model, with the LoRA layers injected into its encoder."""
        return self.peft_model.get_base_model()

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    def activate(self, task: str) -> None:
        """Make `task`'s adapter the active one; a trainable model keeps every adapter trainable."""
        if self.peft_model.active_adapter == task:
            return
        self.peft_model.set_adapter(task, inference_mode=not self.trainable_adapters)
        if self.trainable_adapters:  # set_adapter has set requires_grad=False on the other adapters
            self.peft_model.set_requires_grad(self.config.task_names, requires_grad=True)

    def forward(self, pixel_values: torch.Tensor, task=None, labels=None, **kwargs):
        task_ids = resolve_task_ids(self.config, task, pixel_values.shape[0], pixel_values.device)
        present = torch.unique(task_ids).tolist()
        if len(present) != 1:
            raise ValueError(f"A LoRA model runs one task per forward (one adapter is active at a time); this batch "
                             f"mixes {[self.config.task_names[t] for t in present]}.")
        self.activate(self.config.task_names[present[0]])
        return self.peft_model(pixel_values, task=task_ids, labels=labels, **kwargs)

    def gradient_checkpointing_enable(self, *args, **kwargs) -> None:
        raise ValueError("Gradient checkpointing is not supported with per-task LoRA adapters: the backward "
                         "recomputes every forward with the adapter of the last one.")

    # ---- saving and loading -----------------------------------------------------------------------------------
    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of the plain S5 model: base weights under their own names, no LoRA weights."""
        return {key.replace(".base_layer.", "."): value for key, value in self.base_model.state_dict().items()
                if "lora_" not in key}

    def save_adapters(self, folder: str | Path) -> None:
        """Each task's adapter, PEFT format, in `folder/<task>/`."""
        self.peft_model.save_pretrained(str(folder), selected_adapters=list(self.config.task_names),
                                        safe_serialization=True)

    def save_pretrained(self, folder: str | Path, state_dict=None, safe_serialization: bool = True, **kwargs) -> None:
        """The layout of the module docstring. (`state_dict`, which the training loop passes, is ignored: the
        parts are taken from this module, whose parameters are the ones being trained.)"""
        folder = Path(folder)
        self.base_model.save_pretrained(folder, state_dict=self.plain_state_dict(),
                                        safe_serialization=safe_serialization, **kwargs)
        self.save_adapters(folder / ADAPTER_FOLDER)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> S5LoRAModel:
        """Load a folder written by `save_pretrained` (plain model + `lora/<task>/` adapters) for inference: eval
        mode, every parameter frozen."""
        folder = Path(folder)
        base = S5ForSemanticSegmentation.from_pretrained(folder, **kwargs)
        tasks = base.config.task_names
        peft_model = PeftModel.from_pretrained(base, folder / ADAPTER_FOLDER / tasks[0], adapter_name=tasks[0])
        for task in tasks[1:]:
            peft_model.load_adapter(folder / ADAPTER_FOLDER / task, adapter_name=task)
        peft_model.requires_grad_(False)
        return cls(peft_model, trainable=False).eval()


def add_lora_adapters(model: S5ForSemanticSegmentation, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
                      r: int = 16, alpha: float = 32, dropout: float = 0.0) -> S5LoRAModel:
    """Add one LoRA adapter per task (named after it) to `model`'s encoder, in place, and return the trainable
    `S5LoRAModel`: adapters, decoders and classifiers train; the backbone's own weights are frozen."""
    config = model.config
    if config.use_experts:
        raise ValueError(f"LoRA adapters replace the MoE experts: build the model with part_features=0 "
                         f"(it has part_features={config.part_features}).")
    if "default" in config.task_names:
        raise ValueError("A task named 'default' would be saved where PEFT keeps its unnamed adapter; rename it.")
    template = lora_config(model, target_modules, r=r, alpha=alpha, dropout=dropout)
    tasks = config.task_names
    peft_model = get_peft_model(model, copy.deepcopy(template), adapter_name=tasks[0])
    for task in tasks[1:]:
        peft_model.add_adapter(task, copy.deepcopy(template))
    for name, param in peft_model.named_parameters():
        param.requires_grad = "lora_" in name
    for head in (*model.decoders, *model.classifiers):
        head.requires_grad_(True)
    peft_model.set_adapter(tasks[0])
    peft_model.set_requires_grad(tasks, requires_grad=True)
    return S5LoRAModel(peft_model)


__all__ = ["DEFAULT_TARGET_MODULES", "S5LoRAModel", "add_lora_adapters", "lora_config"]
