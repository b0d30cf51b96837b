"""S5: plain ViT backbone with per-dataset FFN experts (MoE-MDF), multi-scale neck and UperNet decoders."""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, SemanticSegmenterOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_s5 import BACKBONE_FIELDS, DECODER_FIELDS, S5Config

VOID_ID = 255  # the universal "no label" id of every S5 mask (see label_sets.py)
# The neck max-pools the stride-16 grid to stride 32, so each side needs at least two patches.
MIN_PATCHES_PER_SIDE = 2


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class S5ModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_patches, hidden_size)`):
            Output of the last block (the backbone has no final norm).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Mean of the last block's patch tokens: a global image descriptor (used by RS4P diversity selection).
        feature_maps (`tuple(torch.FloatTensor)`):
            The neck's four maps at strides 4, 8, 16 and 32, each with `hidden_size` channels.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embedding output and every block's output, when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention weights of every block, when `output_attentions=True` (eager attention only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class S5EncoderOutput(ModelOutput):
    """
    Args:
        stages (`tuple(torch.FloatTensor)`):
            Outputs of the stages the caller asked for (stage i = output of block i-1), in the order asked, each of shape `(batch_size, num_patches, hidden_size)`.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_patches, hidden_size)`):
            Output of the last block.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): embedding output and every block's output.
        attentions (`tuple(torch.FloatTensor)`, *optional*): every block's attention weights.
    """

    stages: tuple[torch.FloatTensor, ...] | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class S5SemanticSegmenterOutput(SemanticSegmenterOutput):
    """
    `SemanticSegmenterOutput` plus what multi-task S5 models add.

    Args:
        loss (`torch.FloatTensor`, *optional*): sum over the tasks present in the batch of each task's mean
            cross-entropy over its valid pixels (for a single-task batch: that task's mean cross-entropy).
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes, height, width)`):
            Logits at the input resolution. In a batch mixing tasks with different class counts, each row has
            the class count of the largest task; the extra channels of smaller tasks hold the dtype's minimum,
            so argmax and softmax ignore them.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): see `S5ModelOutput`.
        task_ids (`torch.LongTensor` of shape `(batch_size,)`): the task index of every row.
        task_losses (`dict[str, torch.FloatTensor]`, *optional*): each task's mean cross-entropy.
    """

    pooler_output: torch.FloatTensor | None = None
    task_ids: torch.LongTensor | None = None
    task_losses: dict[str, torch.FloatTensor] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Task routing
# ----------------------------------------------------------------------------------------------------------------
class TaskRouting:
    """Which rows of a batch belong to which task: hard routing by dataset, no learned router.

    `groups` lists `(task_index, rows)` in task order; `rows` is `None` when the whole batch is one task, so the
    common single-task case runs without any gather or scatter. `slices` lists `(task_index, slice)` in batch
    order when every task's rows are contiguous (e.g. a batch sorted by task): then each task works on a view of
    the batch, without copying its rows out and back (`None` otherwise).
    """

    slices: list[tuple[int, slice]] | None = None  # class default, for subclasses that skip __init__

    def __init__(self, task_ids: torch.LongTensor):
        self.task_ids = task_ids
        ids = task_ids.tolist()  # one host read of B integers (torch.unique also synchronises)
        present = sorted(set(ids))
        if len(present) == 1:
            self.groups: list[tuple[int, torch.LongTensor | None]] = [(present[0], None)]
            return
        self.groups = [(t, (task_ids == t).nonzero(as_tuple=True)[0]) for t in present]
        runs, start = [], 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or ids[i] != ids[start]:
                runs.append((ids[start], slice(start, i)))
                start = i
        self.slices = runs if len(runs) == len(present) else None

    @classmethod
    def whole_batch(cls, task: int, task_ids: torch.LongTensor | None = None) -> TaskRouting:
        """Every row to `task`, built without reading the task ids on the host (which `torch.compile` and
        `torch.export` cannot trace)."""
        routing = cls.__new__(cls)
        routing.task_ids, routing.groups = task_ids, [(task, None)]
        return routing

    def sorted_by_task(self) -> tuple[torch.LongTensor | None, TaskRouting]:
        """`(order, routing)`: the stable sort that makes every task's rows contiguous and the routing of the
        sorted batch, or `(None, self)` when the rows already are. The sorted routing is derived from this one
        (group sizes are known), without reading the task ids on the host a second time."""
        if self.single or self.slices is not None:
            return None, self
        order = torch.argsort(self.task_ids, stable=True)
        routing = TaskRouting.__new__(TaskRouting)
        routing.task_ids = self.task_ids.index_select(0, order)
        routing.groups, routing.slices, start = [], [], 0
        for task, rows in self.groups:
            span = slice(start, start + rows.numel())
            routing.groups.append((task, torch.arange(span.start, span.stop, device=self.task_ids.device)))
            routing.slices.append((task, span))
            start = span.stop
        return order, routing

    @property
    def single(self) -> bool:
        return self.groups[0][1] is None

    def apply(self, fn: Callable[[int, torch.Tensor], torch.Tensor], inputs: torch.Tensor, out_features: int):
        """Run `fn(task, inputs[rows])` per group and put the results back into one batch tensor."""
        if self.single:
            return fn(self.groups[0][0], inputs)
        if self.slices is not None:  # contiguous rows: views in, one concatenation out
            return torch.cat([fn(task, inputs[rows]) for task, rows in self.slices], dim=0)
        output = inputs.new_zeros(inputs.shape[0], *inputs.shape[1:-1], out_features)
        for task, rows in self.groups:
            output = output.index_copy(0, rows, fn(task, inputs.index_select(0, rows)))
        return output


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, patch_size: int) -> None:
    """Refuse input the model cannot compute a meaningful result for, before any compute is spent on it."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, bands, height, width) tensor, got {shape}.")
    _, bands, height, width = pixel_values.shape
    if bands != num_channels:
        raise ValueError(
            f"This model expects {num_channels} input bands but pixel_values has {bands}. Select or "
            f"convert the bands first (e.g. RGB from a multispectral image)."
        )
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Image size {height}x{width} is not a multiple of the patch size {patch_size}. Pad it first "
            f"(S5ImageProcessor(do_pad=True) pads to a multiple of {patch_size}) or resize it."
        )
    minimum = MIN_PATCHES_PER_SIDE * patch_size
    if height < minimum or width < minimum:
        raise ValueError(
            f"Image size {height}x{width} is too small: S5 needs at least {minimum}x{minimum} pixels "
            f"({MIN_PATCHES_PER_SIDE} patches of {patch_size} per side, because the neck halves the stride-16 grid "
            f"to stride 32). Pad or resize it."
        )
    # One reduction over the input: NaN/Inf would otherwise spread to every logit and give class 0 everywhere.
    # (Skipped while tracing/compiling, where a data-dependent branch cannot be recorded.)
    if pixel_values.is_floating_point() and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        finite = torch.isfinite(pixel_values)
        if not bool(finite.all()):
            per_band = (~finite).sum(dim=(0, 2, 3)).tolist()
            bands_text = ", ".join(f"band {b}: {n}" for b, n in enumerate(per_band) if n)
            raise ValueError(
                f"pixel_values has {sum(per_band)} NaN/Inf values ({bands_text}). Replace no-data pixels "
                f"(e.g. with 0 after normalisation) before the forward pass."
            )


def resolve_task_ids(config: S5Config, task, batch_size: int, device: torch.device) -> torch.LongTensor:
    """Turn `task` (None, a name, one name per sample, or task indices) into a (batch_size,) index tensor."""
    if task is None:
        task = config.default_task
    if isinstance(task, str):
        return torch.full((batch_size,), config.task_index(task), dtype=torch.long, device=device)
    if isinstance(task, torch.Tensor):
        if task.dtype.is_floating_point or task.dtype.is_complex or task.dtype == torch.bool:
            raise ValueError(
                f"task given as a tensor must hold integer task indices, got dtype {task.dtype} "
                f"({task.flatten()[:8].tolist()}); this model's tasks are {config.task_names}."
            )
        task_ids = task.to(device=device, dtype=torch.long).reshape(-1)
        if task_ids.numel() == 1:
            task_ids = task_ids.expand(batch_size)
        bad = task_ids[(task_ids < 0) | (task_ids >= len(config.tasks))]
        if bad.numel():
            raise ValueError(f"Task index {bad[0].item()} is out of range: this model has tasks {config.task_names}.")
    else:
        task_ids = torch.tensor([config.task_index(t) for t in task], dtype=torch.long, device=device)
    if task_ids.shape[0] != batch_size:
        raise ValueError(f"Got {task_ids.shape[0]} task names for a batch of {batch_size} images.")
    return task_ids


# ----------------------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------------------
class S5Embeddings(nn.Module):
    """Patch embedding plus learned absolute position embeddings (patch tokens only, no class token)."""

    def __init__(self, config: S5Config):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.grid_size = config.image_size // config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size**2, config.hidden_size))

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        # The official model only accepts its training size; we resample the grid bicubically for any other size.
        if (height, width) == (self.grid_size, self.grid_size):
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        grid = self.position_embeddings.reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False)
        return grid.to(self.position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, height * width, dim)

    def forward(self, pixel_values: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        if check:  # False only where the caller has just run the same check
            check_pixel_values(pixel_values, self.num_channels, self.patch_size)
        embeddings = self.projection(pixel_values.to(self.projection.weight.dtype))
        grid = embeddings.shape[-2:]
        # Token-major memory (batch, tokens, channels): the transposed view would carry its channel-major layout
        # through every residual add, and each layer norm (forward and backward) would copy it back.
        embeddings = embeddings.flatten(2).transpose(1, 2).contiguous()
        return embeddings + self.interpolate_pos_encoding(*grid), (grid[0], grid[1])


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class S5Attention(nn.Module):
    def __init__(self, config: S5Config):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.dropout = config.attention_probs_dropout_prob
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


class S5DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scale = self.scale(hidden_states)
        return hidden_states if scale is None else hidden_states * scale

    def scale(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The per-sample factor (0 or 1 / keep probability, broadcastable to `hidden_states`), or None when
        inactive."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        return hidden_states.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class S5MLP(nn.Module):
    """The S5 FFN: shared `fc1`; `fc2` is either the full projection (single task) or the shared first
    `hidden - part_features` output channels, with one expert per task producing the last `part_features`."""

    def __init__(self, config: S5Config):
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.part_features = config.part_features if config.use_experts else 0
        self.fc1 = nn.Linear(hidden, inner)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(inner, hidden - self.part_features)
        self.experts = (
            nn.ModuleList(nn.Linear(inner, self.part_features) for _ in config.tasks) if self.part_features else None
        )

    def forward(self, hidden_states: torch.Tensor, routing: TaskRouting) -> torch.Tensor:
        if self.experts is not None and routing.slices is not None:
            # Task by task on views of the batch: the (rows, tokens, intermediate) activations, the largest of the
            # block, exist for one task at a time, as in one forward per task; the shared and expert outputs are
            # written into one output tensor, not concatenated (a batch-sized copy fewer per block).
            out = hidden_states.new_empty(hidden_states.shape)
            split = out.shape[-1] - self.part_features
            for task, rows in routing.slices:
                inner = self.act(self.fc1(hidden_states[rows]))
                out[rows, :, :split] = self.fc2(inner)
                out[rows, :, split:] = self.experts[task](inner)
            return out
        hidden_states = self.act(self.fc1(hidden_states))
        if self.experts is None:
            return self.fc2(hidden_states)
        if routing.single and _plain(self.fc2, nn.Linear) and _plain(self.experts[routing.groups[0][0]], nn.Linear):
            # One task: one product with the shared and expert rows stacked. Two products and a concatenation
            # would copy the output once more, and the backward pass would sum two (rows, tokens, intermediate)
            # input gradients.
            expert = self.experts[routing.groups[0][0]]
            weight = torch.cat([self.fc2.weight, expert.weight])
            bias = torch.cat([self.fc2.bias, expert.bias])
            return F.linear(hidden_states, weight, bias)
        shared = self.fc2(hidden_states)
        expert = routing.apply(lambda task, rows: self.experts[task](rows), hidden_states, self.part_features)
        return torch.cat([shared, expert], dim=-1)


def _plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """A `cls` module whose weights may be used directly, without calling it: not wrapped (PEFT's LoRA layers
    subclass or replace it), without hooks and with the class's own forward (accelerate's offloading replaces an
    instance's forward to move its weights in first)."""
    return (type(module) is cls and not module._forward_pre_hooks and not module._forward_hooks
            and "forward" not in vars(module))


# Ops whose outputs the "elementwise" checkpointing keeps: the matmuls and attention kernels (the compute). The
# rest of a block (layer norms, GELU, residual adds, copies) is recomputed in the backward pass: a few percent of the
# block's time for about a third of its saved activations. Random ops (dropout, the drop-path mask) are recomputed
# too: the checkpoint restores the RNG state, so they draw the same values.
_KEPT_OPS = {
    torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _keep_matmul_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _elementwise_recompute_contexts():
    return create_selective_checkpoint_contexts(_keep_matmul_outputs)


# What the "block" checkpointing keeps: the attention kernel's output. Recomputing it costs about as much as the
# block's four attention projections together, and keeping it costs one (rows, tokens, hidden) tensor per block
# (benchmarks/TRAINING_MEMORY.md).
_ATTENTION_OPS = {op for op in _KEPT_OPS if "attention" in str(op)}


def _keep_attention_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _block_recompute_contexts():
    return create_selective_checkpoint_contexts(_keep_attention_outputs)


class S5Layer(GradientCheckpointingLayer):
    """Pre-norm transformer block. Drop path acts on the FFN branch only, as in the official code.

    `activation_checkpointing` (training only; set it with `S5PreTrainedModel.set_activation_checkpointing`) trades
    compute for memory inside the block: "attention" recomputes the norm + attention branch in the backward pass,
    "mlp" the norm + FFN branch, "elementwise" only the block's non-matmul ops, "block" all but the attention kernel
    and the FFN's output projection. transformers' `activation_checkpointing_enable` recomputes the whole block."""

    activation_checkpointing = "none"

    def __init__(self, config: S5Config, drop_path: float):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = S5Attention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = S5MLP(config)
        self.drop_path = S5DropPath(drop_path)

    def _attention_branch(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attention(self.layernorm_before(hidden_states), **kwargs)

    def _mlp_branch(self, hidden_states: torch.Tensor, routing: TaskRouting) -> torch.Tensor:
        return self.mlp(self.layernorm_after(hidden_states), routing)

    def _block(self, hidden_states: torch.Tensor, routing: TaskRouting, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, mlp_output, attn_weights = self._branches(hidden_states, routing, **kwargs)
        return self._add_mlp_output(hidden_states, mlp_output), attn_weights

    def _branches(self, hidden_states: torch.Tensor, routing: TaskRouting, **kwargs):
        """The block up to its last residual: (input + attention output, FFN output, attention weights)."""
        attn_output, attn_weights = self._attention_branch(hidden_states, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states, self._mlp_branch(hidden_states, routing), attn_weights

    def _add_mlp_output(self, hidden_states: torch.Tensor, mlp_output: torch.Tensor) -> torch.Tensor:
        scale = self.drop_path.scale(mlp_output)
        if scale is None:
            return hidden_states + mlp_output
        # Drop path and residual in one op: one (rows, tokens, hidden) tensor instead of three.
        return torch.addcmul(hidden_states, mlp_output, scale)

    def forward(self, hidden_states: torch.Tensor, routing: TaskRouting, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        mode = self.activation_checkpointing if self.training and torch.is_grad_enabled() else "none"
        # Non-reentrant checkpoints restore the RNG state for the recomputation, so dropout and drop path draw the
        # same masks twice and the gradients equal those without checkpointing.
        if mode == "elementwise":
            return checkpoint(self._block, hidden_states, routing, use_reentrant=False,
                              context_fn=_elementwise_recompute_contexts, **kwargs)
        if mode == "block":
            # Drop path + residual outside the checkpoint: the recomputation stops once the backward pass has the
            # inputs of the FFN's output projection. Inside, the drop-path mask, saved after that projection, would
            # make it run that projection again too (a ninth of the block's FLOPs).
            hidden_states, mlp_output, attn_weights = checkpoint(
                self._branches, hidden_states, routing, use_reentrant=False, context_fn=_block_recompute_contexts,
                **kwargs)
            return self._add_mlp_output(hidden_states, mlp_output), attn_weights
        if mode == "attention":
            attn_output, attn_weights = checkpoint(self._attention_branch, hidden_states, use_reentrant=False, **kwargs)
        else:
            attn_output, attn_weights = self._attention_branch(hidden_states, **kwargs)
        hidden_states = hidden_states + attn_output
        if mode == "mlp":  # drop path stays outside: its mask is one value per image
            mlp_output = checkpoint(self._mlp_branch, hidden_states, routing, use_reentrant=False)
        else:
            mlp_output = self._mlp_branch(hidden_states, routing)
        return self._add_mlp_output(hidden_states, mlp_output), attn_weights


class S5ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class S5Upsample2x(nn.ConvTranspose2d):
    """The neck's ConvTranspose2d(kernel 2, stride 2), computed as matrix products: each input pixel makes its own
    2x2 output patch, so output pixel (2y + i, 2x + j) is pixel (y, x) @ weight[:, :, i, j] + bias. Same parameters
    and outputs as the library layer, at the matmul rate (the library's transposed convolution ran its backward at a
    fifth of it on CPU). The output is NCHW in channels-last memory, the layout the following layer norm and
    convolutions read without copies.

    Training: one product for the four (i, j), then one rearranging copy; its backward is two products. Without
    gradients: one product per (i, j) written into its pixels of the output, so the temporary is a quarter of the
    output instead of all of it (with gradients, autograd would copy the whole output gradient for every slice)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor, projection: torch.Tensor | None = None) -> torch.Tensor:
        """`projection` (out, channels[, 1, 1]), optional: the weight of a bias-free 1x1 convolution to apply to the output.
        Both are linear, so it is composed with this layer's weights and the output comes out with `out` channels
        from one product on the input pixels, never materialising the `channels`-wide upsampled map."""
        batch, channels, height, width = hidden_states.shape
        weight, bias = self.weight, self.bias  # (in, out, 2, 2), (out,)
        if projection is not None:
            projection = projection.flatten(1)
            weight, bias = torch.einsum("icab,pc->ipab", weight, projection), projection @ bias
        out_channels = weight.shape[1]
        pixels = hidden_states.permute(0, 2, 3, 1).reshape(-1, channels)
        if torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad):
            patches = torch.addmm(bias.repeat_interleave(4), pixels, weight.reshape(channels, out_channels * 4))
            patches = patches.view(batch, height, width, out_channels, 2, 2).permute(0, 1, 4, 2, 5, 3)
            out = patches.reshape(batch, 2 * height, 2 * width, out_channels)
        else:
            out = pixels.new_empty(batch, 2 * height, 2 * width, out_channels)
            for i in range(2):
                for j in range(2):
                    patch = torch.addmm(bias, pixels, weight[:, :, i, j])
                    out[:, i::2, j::2] = patch.view(batch, height, width, out_channels)
        return out.permute(0, 3, 1, 2)


class S5Neck(nn.Module):
    """Turns the four stride-16 feature maps into strides 4, 8, 16 and 32."""

    def __init__(self, config: S5Config):
        super().__init__()
        dim = config.hidden_size
        self.to_stride4 = nn.Sequential(
            S5Upsample2x(dim),
            S5ChannelLayerNorm(dim, eps=config.neck_layer_norm_eps),
            nn.GELU(),
            S5Upsample2x(dim),
        )
        self.to_stride8 = S5Upsample2x(dim)
        self.to_stride32 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, maps: Sequence[torch.Tensor], stride4_projection: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """`stride4_projection`: the weight (out, hidden, 1, 1) of a bias-free 1x1 convolution that the stride-4 map
        comes out already projected by, composed with the last upsampling (`S5Upsample2x`)."""
        if stride4_projection is None:
            stride4 = self.to_stride4(maps[0])
        else:
            stride4 = self.to_stride4[-1](self.to_stride4[:-1](maps[0]), stride4_projection)
        return stride4, self.to_stride8(maps[1]), maps[2], self.to_stride32(maps[3])

    def composes_with(self, lateral: nn.Module) -> bool:
        """Whether the last stride-4 upsampling may run composed with the convolution of `lateral` (a decoder's
        first `S5ConvBNReLU`; see `forward`): it must be a bias-free 1x1 convolution, and no module whose call
        the composition skips (the stride-4 stack, the upsampling's own call, the lateral block and its
        convolution) may be wrapped or hooked."""
        if not _plain(lateral, S5ConvBNReLU):
            return False
        conv = lateral[0]
        return (_plain(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None and conv.groups == 1
                and _plain(self.to_stride4, nn.Sequential) and _plain(self.to_stride4[-1], S5Upsample2x))


# ----------------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------------
class S5ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class S5UperNetDecoder(nn.Module):
    """UperNet: pyramid pooling on the stride-32 map, top-down FPN, fusion of the four levels at stride 4."""

    def __init__(self, config: S5Config):
        super().__init__()
        in_ch, ch = config.hidden_size, config.decoder_hidden_size
        self.pool_scales = list(config.pool_scales)
        self.psp_convs = nn.ModuleList(S5ConvBNReLU(in_ch, ch, 1) for _ in self.pool_scales)
        self.psp_bottleneck = S5ConvBNReLU(in_ch + len(self.pool_scales) * ch, ch, 3)
        self.lateral_convs = nn.ModuleList(S5ConvBNReLU(in_ch, ch, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(S5ConvBNReLU(ch, ch, 3) for _ in range(3))
        self.fpn_bottleneck = S5ConvBNReLU(4 * ch, ch, 3)

    def pyramid_pooling(self, top: torch.Tensor) -> torch.Tensor:
        pooled = [top]
        for scale, conv in zip(self.pool_scales, self.psp_convs):
            level = conv(F.adaptive_avg_pool2d(top, scale))
            pooled.append(F.interpolate(level, size=top.shape[2:], mode="bilinear", align_corners=False))
        return self.psp_bottleneck(torch.cat(pooled, dim=1))

    def forward(self, feature_maps: Sequence[torch.Tensor], stride4_projected: bool = False) -> torch.Tensor:
        """`stride4_projected`: the stride-4 map already went through the first lateral convolution's conv (the
        neck composed it with its last upsampling, see `S5ForSemanticSegmentation._decode`)."""
        first = self.lateral_convs[0]
        if stride4_projected:
            _, norm, act = first
            laterals = [act(norm(feature_maps[0]))]
        else:
            laterals = [first(feature_maps[0])]
        laterals += [conv(fmap) for conv, fmap in zip(self.lateral_convs[1:], feature_maps[1:3])]
        laterals.append(self.pyramid_pooling(feature_maps[3]))
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear", align_corners=False
            )
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)] + [laterals[3]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class S5Classifier(nn.Sequential):
    def __init__(self, config: S5Config, num_classes: int):
        super().__init__(nn.Dropout2d(config.classifier_dropout), nn.Conv2d(config.decoder_hidden_size, num_classes, 1))


# ----------------------------------------------------------------------------------------------------------------
# Pretrained models
# ----------------------------------------------------------------------------------------------------------------
# Written into every saved folder's config, so each Auto class (not only the saved model's) loads it with
# trust_remote_code=True where s5_hf is not installed.
AUTO_MAP = {
    "AutoModel": "modeling_s5.S5Model",
    "AutoBackbone": "modeling_s5.S5Backbone",
    "AutoModelForSemanticSegmentation": "modeling_s5.S5ForSemanticSegmentation",
}
# from_pretrained arguments that say where the saved configuration is, passed on when we read it for the check.
_LOCATION_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


ACTIVATION_CHECKPOINTING_PARTS = ("elementwise", "attention", "mlp", "block")


def parse_activation_checkpointing(mode: str) -> tuple[str, int]:
    """"none" or "<part>[:k]" (see `S5PreTrainedModel.set_activation_checkpointing`) -> (part, k)."""
    text = str(mode).strip().lower()
    part, colon, every = text.partition(":")
    if text == "none":
        return "none", 1
    if part in ACTIVATION_CHECKPOINTING_PARTS and (not colon or (every.isdigit() and int(every) >= 1)):
        return part, int(every) if colon else 1
    raise ValueError(
        f"Unknown activation checkpointing mode {mode!r}: use 'none' or one of {', '.join(ACTIVATION_CHECKPOINTING_PARTS)}, "
        f"optionally with ':k' for every k-th block only (e.g. 'block:2')."
    )


class S5PreTrainedModel(PreTrainedModel):
    config: S5Config
    config_class = S5Config
    base_model_prefix = "s5"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["S5Embeddings", "S5Layer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # `nn.init` is looked up at call time, so transformers' guarded versions apply while loading and
        # weights that came from a checkpoint are never overwritten.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.running_mean)
                nn.init.ones_(module.running_var)
                nn.init.zeros_(module.num_batches_tracked)
        elif isinstance(module, S5Embeddings):
            nn.init.trunc_normal_(module.position_embeddings, std=std)

    def set_activation_checkpointing(self, mode: str = "block") -> None:
        """Choose what the backbone blocks recompute in the backward pass instead of keeping it (training only).

        `mode` is "none", or a part, optionally followed by ":k" to apply it to every k-th block only (blocks 0,
        k, 2k, ...; fewer recomputations, more memory):
        - "elementwise": keep the outputs of the matmuls and attention, recompute the layer norms, GELU and
          residual adds: about a third less block memory for a few percent more time;
        - "attention": recompute the norm + attention branch; "mlp": the norm + FFN branch;
        - "block": recompute the block from its input up to the inputs of the FFN's output projection, except
          the attention kernel, whose output is kept (transformers' `activation_checkpointing_enable`, which keeps
          working on its own and is reported as "block", recomputes all of it): the least memory, one more
          forward of the block's other projections.
        Every mode gives the loss and gradients of "none" (the recomputation restores the RNG state, so
        dropout and drop path draw the same masks). `benchmarks/TRAINING_MEMORY.md` measures the trade-off.
        """
        part, every = parse_activation_checkpointing(mode)
        self.activation_checkpointing_disable()
        layers = [module for module in self.modules() if isinstance(module, S5Layer)]
        for index, layer in enumerate(layers):
            on = part != "none" and index % every == 0
            layer.activation_checkpointing = part if on else "none"

    @property
    def activation_checkpointing(self) -> str:
        """The current `set_activation_checkpointing` mode ("custom" for a pattern no mode describes)."""
        layers = [module for module in self.modules() if isinstance(module, S5Layer)]
        parts = ["block" if layer.gradient_checkpointing else layer.activation_checkpointing for layer in layers]
        on = [i for i, part in enumerate(parts) if part != "none"]
        if not on:
            return "none"
        every = on[1] - on[0] if len(on) > 1 else max(len(layers), 1)
        expected = [parts[on[0]] if i % every == 0 else "none" for i in range(len(layers))]
        if parts != expected:
            return "custom"
        return parts[on[0]] if every == 1 else f"{parts[on[0]]}:{every}"

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        # Only the classes of this file: subclasses elsewhere (e.g. detection models) have their own Auto classes.
        if self._auto_class is not None and type(self).__module__ == __name__:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a configuration that would make the saved weights compute another
        function (e.g. `num_attention_heads=...` or `layer_norm_eps=...` passed as overrides or in `config`) is
        refused, naming the fields, instead of loading the same tensors silently. With `ignore_mismatched_sizes=True`
        a different task list (new heads) is allowed."""
        if pretrained_model_name_or_path is not None and not isinstance(config, (str, os.PathLike)):
            cls._check_checkpoint_config(pretrained_model_name_or_path, config, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def _check_checkpoint_config(cls, location, config, kwargs: dict) -> None:
        try:
            where = {k: kwargs[k] for k in _LOCATION_KWARGS if k in kwargs}
            saved = cls.config_class.from_pretrained(location, **where)
        except (OSError, ValueError):
            return  # not an S5 folder: transformers reports what is missing
        if config is None:
            fields = (*BACKBONE_FIELDS, *DECODER_FIELDS, "tasks", "part_features")
            overrides = {k: kwargs[k] for k in fields if k in kwargs}
            if not overrides:
                return
            values = {k: v for k, v in saved.to_dict().items() if k not in ("auto_map", "out_features")}
            config = cls.config_class.from_dict({**values, **overrides})
        if not hasattr(config, "architecture_differences"):
            return
        diff = saved.architecture_differences(config, tasks=not kwargs.get("ignore_mismatched_sizes", False))
        if diff:
            raise ValueError(
                f"{location}: the requested configuration differs from the saved one in {diff} (saved, requested). "
                f"The saved weights would load but compute a different function; load the checkpoint without "
                f"these changes."
            )


def stages_to_maps(stages: Sequence[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
    """(batch, patches, hidden) token sequences -> (batch, hidden, grid_h, grid_w) maps for the neck."""
    return [s.transpose(1, 2).reshape(s.shape[0], -1, *grid) for s in stages]


class S5Encoder(nn.Module):
    def __init__(self, config: S5Config):
        super().__init__()
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layer = nn.ModuleList(S5Layer(config, rate) for rate in rates)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        routing: TaskRouting,
        out_indices: Sequence[int],
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> S5EncoderOutput:
        """Runs the blocks; `stages` holds the outputs of the stages in `out_indices` (stage i = block i-1), in
        that order, and `hidden_states`/`attentions` optionally all of them."""
        keep = set(out_indices)
        kept, all_hidden, all_attn = {}, (hidden_states,), ()
        kwargs = {"output_attentions": True} if output_attentions else {}
        for i, layer in enumerate(self.layer):
            hidden_states, attn = layer(hidden_states, routing, **kwargs)
            if i + 1 in keep:
                kept[i + 1] = hidden_states
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attn += (attn,)
        return S5EncoderOutput(
            stages=tuple(kept[i] for i in out_indices),
            last_hidden_state=hidden_states,
            hidden_states=all_hidden if output_hidden_states else None,
            attentions=all_attn if output_attentions else None,
        )


class S5Model(S5PreTrainedModel):
    """The S5 backbone: ViT (with per-task FFN experts when configured) and the multi-scale neck."""

    def __init__(self, config: S5Config):
        super().__init__(config)
        self.embeddings = S5Embeddings(config)
        self.encoder = S5Encoder(config)
        self.neck = S5Neck(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    def forward(
        self,
        pixel_values: torch.Tensor,
        task: str | Sequence[str] | torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        routing: TaskRouting | None = None,
        **kwargs,
    ) -> S5ModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, bands, height, width)`):
            Normalised images; height and width must be multiples of the patch size.
        task (`str`, `list[str]` or `torch.LongTensor`, *optional*):
            The dataset each image belongs to: one name for the batch, one name per image, or task indices. It
            selects the FFN expert. Defaults to `config.default_task`.
        routing (`TaskRouting`, *optional*):
            For callers that have already checked `pixel_values` and resolved `task` (e.g.
            `S5ForSemanticSegmentation`): used instead of `task`, and the input checks are not repeated.
        skip_neck (`bool`, *optional*, keyword): internal; `feature_maps` are then the four stride-16 stages in
            `config.out_indices` before the neck.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError("output_attentions=True needs attn_implementation='eager'.")

        checked = routing is not None
        if routing is None:
            routing = TaskRouting(resolve_task_ids(self.config, task, pixel_values.shape[0], pixel_values.device))
        # Run the blocks sorted by task (contiguous rows: the experts take views, not gathered copies of the FFN
        # activations in every block) and put the outputs back in the caller's order once.
        order, routing = routing.sorted_by_task()
        if order is not None:
            pixel_values = pixel_values.index_select(0, order)
        embeddings, (grid_h, grid_w) = self.embeddings(pixel_values, check=not checked)
        encoded = self.encoder(embeddings, routing, self.config.out_indices, output_hidden_states, output_attentions)
        stages, last = encoded.stages, encoded.last_hidden_state
        hidden_states, attentions = encoded.hidden_states, encoded.attentions
        if order is not None:
            inverse = torch.argsort(order)
            stages = tuple(s.index_select(0, inverse) for s in stages)
            last = last.index_select(0, inverse)
            if hidden_states is not None:
                hidden_states = tuple(h.index_select(0, inverse) for h in hidden_states)
            if attentions is not None:
                attentions = tuple(a.index_select(0, inverse) for a in attentions)
        maps = stages_to_maps(stages, (grid_h, grid_w))
        output = S5ModelOutput(
            last_hidden_state=last,
            pooler_output=last.mean(dim=1),
            # `skip_neck`: the caller runs the neck itself, per task (its stride-4 maps dominate the memory).
            feature_maps=tuple(maps) if kwargs.get("skip_neck") else self.neck(maps),
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


class S5Backbone(BackboneMixin, S5PreTrainedModel):
    """S5 as a transformers backbone (e.g. for `UperNetForSemanticSegmentation`): `feature_maps` are the neck's
    four maps at strides 4, 8, 16, 32. The stages in `config.out_indices` feed the neck."""

    has_attentions = True

    def __init__(self, config: S5Config):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.s5 = S5Model(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        task: str | Sequence[str] | torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.s5(
            pixel_values,
            task=task,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        output = BackboneOutput(
            feature_maps=outputs.feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


def check_label_dtype(labels: torch.Tensor) -> None:
    """Labels are class ids: a float tensor would be truncated (1.7 -> 1) without a word."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a tensor of class ids, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor of class ids, got dtype {labels.dtype}; convert whole-number "
            f"labels with labels.long() (fractional values would have been truncated)."
        )


def task_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None, task_name: str = "task"
) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is neither the task's `ignore_index` (None: none) nor the
    void id 255: the supervised loss of every S5 stage (S4P labeled term, MoE-MDF per task), computed in float32.

    `logits` are (batch, classes, ...) and `labels` (batch, ...) integer class ids. Labels outside
    `[0, num_classes)` that are not ignored raise an error naming them, instead of the opaque device-side
    assertion (or silently wrong loss) of a plain `F.cross_entropy`. With every pixel ignored the loss is 0, still
    attached to the graph (zero gradients).
    """
    check_label_dtype(labels)
    if logits.ndim < 2 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{task_name}: logits {tuple(logits.shape)} (batch, classes, ...) do not match labels "
                         f"{tuple(labels.shape)} (batch, ...).")
    num_classes = logits.shape[1]
    labels = labels.long()
    ignored = labels == VOID_ID
    if ignore_index is not None:
        ignored |= labels == ignore_index
    invalid = ~ignored & ((labels < 0) | (labels >= num_classes))
    if invalid.any():
        values = torch.unique(labels[invalid]).tolist()[:10]
        raise ValueError(
            f"{task_name}: label ids {values} are outside the {num_classes} classes 0..{num_classes - 1} "
            f"(ignored ids: {ignore_index} and {VOID_ID})."
        )
    # F.cross_entropy is one fused log-softmax + NLL: no probability tensor besides the log-softmax it keeps. Summed,
    # then divided by at least 1 valid pixel: the mean over the valid pixels, 0 (still attached to the graph) when
    # there are none, without asking the device whether there are (a sync, and a torch.compile graph break).
    total = F.cross_entropy(logits.float(), labels.masked_fill(ignored, -100), ignore_index=-100, reduction="sum")
    return total / (~ignored).sum().clamp(min=1)


class S5ForSemanticSegmentation(S5PreTrainedModel):
    """S5 with one UperNet decoder and classifier per task. With one task this is the S4P model; with several
    it is the MoE-MDF model, and a batch may mix tasks freely."""

    def __init__(self, config: S5Config):
        super().__init__(config)
        self.s5 = S5Model(config)
        self.decoders = nn.ModuleList(S5UperNetDecoder(config) for _ in config.tasks)
        self.classifiers = nn.ModuleList(S5Classifier(config, t.num_labels) for t in config.tasks)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        task: str | Sequence[str] | torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> S5SemanticSegmenterOutput | tuple:
        r"""
        task (`str`, `list[str]` or `torch.LongTensor`, *optional*):
            Dataset of each image (selects the expert, decoder and classes); defaults to `config.default_task`.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class ids; the task's ignore index and 255 are ignored.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # Every check on the inputs runs before the backbone, so a bad call fails at once, not after the compute.
        check_pixel_values(pixel_values, self.config.num_channels, self.config.patch_size)
        task_ids = resolve_task_ids(self.config, task, pixel_values.shape[0], pixel_values.device)
        routing = TaskRouting(task_ids)
        if self.training and 1 in self.config.pool_scales:
            lonely = [self.config.task_names[t] for t, rows in routing.groups
                      if (pixel_values.shape[0] if rows is None else rows.numel()) == 1]
            if lonely:
                raise ValueError(
                    f"In training mode every task needs at least 2 images per batch (BatchNorm after the 1x1 "
                    f"pyramid pooling has a single value per channel otherwise); tasks with one image: {lonely}. "
                    f"Call model.eval() for inference."
                )
        if labels is not None:
            check_label_dtype(labels)
            if labels.ndim == 0 or labels.shape[0] != pixel_values.shape[0]:
                count = labels.shape[0] if labels.ndim else 0
                raise ValueError(f"Got {count} label maps for {pixel_values.shape[0]} images.")
        # A mixed batch runs sorted by task, so that every task's rows are contiguous: the experts and decoders
        # then work on views of the batch instead of gathered copies (index_select of the stride-4 neck maps
        # alone was +0.5 GB at 8 images of 512 px). Only the input, the low-resolution logits and the small
        # outputs are permuted; a batch whose tasks are already contiguous is not permuted at all.
        order, run_routing = routing.sorted_by_task()
        run_pixels = pixel_values if order is None else pixel_values.index_select(0, order)
        if self._task_by_task(run_routing, run_pixels, output_hidden_states, output_attentions):
            # On CPU a mixed batch runs through the backbone one task at a time: one forward of the whole batch
            # measured 0.97x the speed of per-task forwards and +2 % memory (ViT-B, 2 images x 4 tasks), as its
            # memory-bound ops (norms, GELU, adds) work on tensors four times larger, out of cache. GPUs keep the
            # one forward, whose larger matmuls fill the device.
            parts = [self._task_forward(t, run_pixels[rows], run_routing.task_ids[rows])
                     for t, rows in run_routing.slices]
            low = [(t, part[0]) for (t, _), part in zip(run_routing.slices, parts)]
            logits = self._merge_logits(low, run_routing, order, pixel_values.shape[-2:])
            pooler_output = torch.cat([part[1] for part in parts])
            hidden_states = attentions = None
        else:
            outputs = self.s5(
                run_pixels,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
                return_dict=True,
                routing=run_routing,
                skip_neck=True,
            )
            logits = self._logits(outputs.feature_maps, run_routing, order, pixel_values.shape[-2:])
            pooler_output, hidden_states, attentions = outputs.pooler_output, outputs.hidden_states, outputs.attentions
        if order is not None:  # back to the caller's order
            inverse = torch.argsort(order)
            pooler_output = pooler_output.index_select(0, inverse)
            if hidden_states is not None:
                hidden_states = tuple(h.index_select(0, inverse) for h in hidden_states)
            if attentions is not None:
                attentions = tuple(a.index_select(0, inverse) for a in attentions)

        loss, task_losses = None, None
        if labels is not None:
            task_losses = {}
            for t, rows in routing.groups:
                spec = self.config.tasks[t]
                classes = spec.num_labels
                if rows is None:
                    task_logits, task_labels = logits, labels
                elif routing.slices is not None:
                    span = next(s for task, s in routing.slices if task == t)
                    task_logits, task_labels = logits[span, :classes], labels[span]
                else:
                    task_logits, task_labels = logits.index_select(0, rows)[:, :classes], labels.index_select(0, rows)
                task_losses[spec.name] = task_cross_entropy(task_logits, task_labels, spec.ignore_index, spec.name)
            loss = sum(task_losses.values())

        output = S5SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=hidden_states,
            attentions=attentions,
            pooler_output=pooler_output,
            task_ids=task_ids,
            task_losses=task_losses,
        )
        return output if return_dict else output.to_tuple()

    def _logits(self, feature_maps, routing: TaskRouting, order: torch.Tensor | None, size) -> torch.Tensor:
        """Every row's neck, decoder and classifier, upsampled to the input size, in the caller's row order.

        `feature_maps` are the stride-16 stages before the neck; `routing` describes their (possibly task-sorted)
        rows; `order` is the sort (None: none). The neck runs per task like the decoders (it treats every image on
        its own), so its stride-4 maps, the largest tensors of the forward, exist for one task at a time, as in
        one forward per task.
        A mixed batch is merged at the decoder's resolution (stride 4) and upsampled once, into the output
        itself: no per-task full-resolution copy. Bilinear upsampling treats every channel on its own, so the
        real channels are exactly those of a per-task upsampling; padded channels are set to the dtype's
        minimum afterwards (argmax and softmax ignore them)."""
        if routing.single:
            return self._upsample(self._decode(routing.groups[0][0], feature_maps), size)
        low = [(t, self._decode(t, [f[rows] for f in feature_maps])) for t, rows in routing.slices]
        return self._merge_logits(low, routing, order, size)

    def _task_by_task(self, routing: TaskRouting, pixel_values: torch.Tensor, output_hidden_states,
                      output_attentions) -> bool:
        """Whether a mixed batch runs one task at a time through the backbone (CPU; not when per-layer outputs,
        which have one tensor for the whole batch, are asked for)."""
        hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        attention = self.config.output_attentions if output_attentions is None else output_attentions
        return routing.slices is not None and pixel_values.device.type == "cpu" and not (hidden or attention)

    def _task_forward(self, task: int, pixel_values: torch.Tensor, task_ids: torch.Tensor):
        """(stride-4 logits, pooled output) of rows of one task; its stage maps are freed on return, before the
        next task runs."""
        outputs = self.s5(pixel_values, return_dict=True, skip_neck=True,
                          routing=TaskRouting.whole_batch(task, task_ids))
        return self._decode(task, outputs.feature_maps), outputs.pooler_output

    def _decode(self, task: int, feature_maps) -> torch.Tensor:
        """Neck, decoder and classifier of one task: logits at stride 4.

        The neck's last upsampling and the decoder's first lateral 1x1 convolution are both linear, so they run
        as one product with composed weights: a quarter of the FLOPs of the two (ViT-B, 2 images of 512 px: 13
        instead of 52 GFLOP forward, and as much saved twice in the backward pass), and no hidden-wide stride-4
        map (96 MB kept for the backward pass there)."""
        neck, decoder = self.s5.neck, self.decoders[task]
        lateral = decoder.lateral_convs[0]
        if neck.composes_with(lateral):
            # The parameter itself, not a view: a view made without gradients but of a parameter that requires
            # them has no autograd node, which module hooks (torch's ModuleTracker, under FlopCounterMode) reject.
            maps = neck(feature_maps, stride4_projection=lateral[0].weight)
            return self.classifiers[task](decoder(maps, stride4_projected=True))
        return self.classifiers[task](decoder(neck(feature_maps)))

    def _upsample(self, low: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(low, size=size, mode="bilinear", align_corners=self.config.logits_align_corners)

    def _merge_logits(self, low, routing: TaskRouting, order: torch.Tensor | None, size) -> torch.Tensor:
        """The stride-4 logits of every task (`(task, logits)` in `routing.slices` order) as one batch at the input
        size, in the caller's row order (see `_logits`)."""
        classes = max(part.shape[1] for _, part in low)
        merged = torch.cat([F.pad(part, (0, 0, 0, 0, 0, classes - part.shape[1])) for _, part in low], dim=0)
        if order is not None:
            merged = merged.index_select(0, torch.argsort(order))
        logits = self._upsample(merged, size)
        padded = torch.tensor([spec.num_labels < classes for spec in self.config.tasks], device=logits.device)
        if bool(padded.any()):
            counts = torch.tensor([spec.num_labels for spec in self.config.tasks], device=logits.device)
            channel = torch.arange(classes, device=logits.device)
            task_ids = routing.task_ids if order is None else routing.task_ids.index_select(0, torch.argsort(order))
            mask = channel[None, :] >= counts[task_ids][:, None]  # (batch, classes): channels beyond the task's
            logits = logits.masked_fill_(mask[:, :, None, None], torch.finfo(logits.dtype).min)
        return logits

    # ---- conversions between single-task and multi-task models ------------------------------------------------
    @classmethod
    def from_official(cls, repo_id: str, filename: str, **kwargs) -> S5ForSemanticSegmentation:
        """Load a released official S5 checkpoint (`.pth` or `.safetensors` file `filename` of Hub repo `repo_id`)
        as an S5 model; see `s5_hf.convert_official.from_official` for the options."""
        # Imported here, not at the top: the model files saved with a checkpoint (remote code) must not need s5_hf.
        try:
            convert_official = importlib.import_module("s5_hf.convert_official")
        except ImportError as error:
            raise ImportError("from_official needs the s5_hf package (it converts official checkpoints).") from error
        return convert_official.from_official(repo_id, filename, **kwargs)

    @classmethod
    def from_single_task(
        cls, model: S5ForSemanticSegmentation, config: S5Config, copy_decoder: bool = True
    ) -> S5ForSemanticSegmentation:
        """Build a multi-task model from a single-task one (S4P -> MoE-MDF initialisation).

        Every expert starts as the last `part_features` rows of the pretrained fc2 and the shared part as the
        first rows, so every task computes exactly the pretrained backbone. With `copy_decoder` the pretrained
        decoder is copied into every task's decoder; classifiers start fresh (the class counts differ).
        """
        if len(model.config.tasks) != 1:
            raise ValueError(f"from_single_task needs a single-task model, got tasks {model.config.task_names}.")
        _check_same_backbone(model.config, config)
        new = cls(config)
        source = model.s5.state_dict()
        target = {}
        split = config.hidden_size - config.part_features if config.use_experts else config.hidden_size
        for key, value in source.items():
            if ".mlp.fc2." in key and config.use_experts:
                target[key] = value[:split]
                for e in range(len(config.tasks)):
                    target[key.replace(".mlp.fc2.", f".mlp.experts.{e}.")] = value[split:]
            else:
                target[key] = value
        new.s5.load_state_dict(target, strict=True)
        if copy_decoder:
            for decoder in new.decoders:
                decoder.load_state_dict(model.decoders[0].state_dict())
        return new

    def extract_task(self, name: str) -> S5ForSemanticSegmentation:
        """A plain single-task model for task `name`: its expert folded into the FFN, its decoder and classifier.

        It computes the same function as this model on that task, with the parameter count of a single-task model.
        """
        index = self.config.task_index(name)
        spec = self.config.tasks[index]
        config = copy.deepcopy(self.config)
        config.tasks = [copy.deepcopy(spec)]
        config.set_default_task(spec.name)
        single = type(self)(config)
        source, state = self.s5.state_dict(), {}
        for key, value in source.items():
            if ".mlp.experts." in key:
                continue
            if ".mlp.fc2." in key and self.config.use_experts:
                value = torch.cat([value, source[key.replace(".mlp.fc2.", f".mlp.experts.{index}.")]], dim=0)
            state[key] = value
        single.s5.load_state_dict(state, strict=True)
        single.decoders[0].load_state_dict(self.decoders[index].state_dict())
        single.classifiers[0].load_state_dict(self.classifiers[index].state_dict())
        return single.to(dtype=self.dtype, device=self.device).train(self.training)

    def set_default_task(self, name: str) -> None:
        """Use task `name` when no `task` is passed, e.g. in `pipeline("image-segmentation")`."""
        self.config.set_default_task(name)

    def add_task(self, task: str | dict, init_from: str | None = None) -> S5ForSemanticSegmentation:
        """Extend this trained multi-task model with a new dataset, in place; returns the model.

        `task` is a known benchmark name or a dict `{"name", "id2label", "ignore_index"}` (as in `S5Config.tasks`).
        The new task gets, appended after the existing ones (so no existing index moves):
        - in every block, a new FFN expert copied from the expert of `init_from` (default: the first task). A
          trained MoE-MDF model no longer holds the pretrained fc2 tail rows that `from_single_task` starts from,
          and the expert of a trained task is the nearest thing: the new task then starts at that task's backbone;
        - a copy of `init_from`'s decoder (decoders start from a trained one) and a fresh classifier.
        Nothing else changes, and every existing task keeps its own expert, decoder and classifier, so each old
        task's outputs are bit-identical before and after (the MoE promise that a new dataset leaves the old ones
        alone). Train only the new task's parameters (`finetune_mdf.py --train_only_new`) to keep it so.

        A model without experts (`part_features=0`) gets a shared-backbone task: only a decoder and classifier
        are added. A single-task model with `part_features > 0` is refused: as a multi-task model its FFN would
        split into shared rows and experts (another computation); build it with `from_single_task` instead.
        """
        if len(self.config.tasks) == 1 and self.config.part_features > 0:
            raise ValueError(
                f"add_task: this is a single-task model ({self.config.task_names[0]!r}) with part_features="
                f"{self.config.part_features}; with a second task its FFN would become shared rows plus experts. "
                f"Use S5ForSemanticSegmentation.from_single_task(model, S5Config(..., tasks=[old, new])) instead, "
                f"or a config with part_features=0 for a shared backbone."
            )
        source = self.config.task_index(init_from) if init_from is not None else 0
        # Validate the new task exactly as a configuration would (known name or dict, unique name, class ids).
        values = {k: v for k, v in self.config.to_dict().items() if k not in ("auto_map", "model_type")}
        checked = type(self.config).from_dict({**values, "tasks": [*self.config.tasks, task]})
        spec = checked.tasks[-1]
        if checked.use_experts != self.config.use_experts:  # guarded above; kept so the layout can never drift
            raise ValueError("add_task: adding the task would change whether the model has experts.")
        reference = self.decoders[source]
        parameter = next(reference.parameters())
        classifier = S5Classifier(self.config, spec.num_labels)
        for module in classifier.modules():
            self._init_weights(module)
        if self.config.use_experts:
            for layer in self.s5.encoder.layer:
                layer.mlp.experts.append(copy.deepcopy(layer.mlp.experts[source]))
        decoder = copy.deepcopy(reference)
        self.decoders.append(decoder.train(self.training))
        self.classifiers.append(classifier.to(dtype=parameter.dtype, device=parameter.device).train(self.training))
        self.config.tasks = [*self.config.tasks, spec]
        return self


def adapt_patch_embedding(
    model: S5PreTrainedModel, num_channels: int, rgb_bands: Sequence[int] = (0, 1, 2), rescale: bool = True
) -> S5PreTrainedModel:
    """Adapt an RGB model (`num_channels=3`) to `num_channels` input bands, in place; returns the model.

    The patch-embedding kernel `W` (hidden, 3, p, p) becomes `W'` (hidden, N, p, p):
    - `W'[:, rgb_bands[i]] = W[:, i]`: the bands the user maps to R, G and B keep the RGB filters;
    - every other band starts from the mean of the three RGB filters (a band the RGB model never saw is treated
      as one more visible-like channel, the usual choice when inflating a first layer);
    - with `rescale`, the whole kernel is multiplied by 3/N. Inputs are normalised per band (zero mean, unit
      std), and neighbouring spectral bands are strongly correlated, so a filter bank summing over N bands instead
      of 3 would grow the patch activations about N/3 times; 3/N keeps their scale (exact for N identical bands
      at the mean filter). The bias is not scaled.
    Consequence for the identity check: with the extra filters set to zero, the adapted model fed
    `[R, G, B, extra...]` reproduces the RGB model only with `rescale=False` (or after multiplying the RGB
    filters back by N/3).
    `config.num_channels` becomes N and `config.band_adaptation` records what was done
    (`{"from_channels": 3, "rgb_bands": [...], "extra_init": "mean_rgb", "scale": 3/N or 1.0}`), so the saved
    model says how its first layer was made. The image processor must then normalise N bands (e.g. the band
    statistics of `s5_hf.data.band_stats`).
    """
    config = model.config
    if config.num_channels != 3:
        raise ValueError(f"adapt_patch_embedding needs an RGB model (num_channels=3), got num_channels="
                         f"{config.num_channels}.")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 3:
        raise ValueError(f"num_channels must be an integer >= 3 (the RGB bands plus extra ones), got {num_channels!r}.")
    bands = list(rgb_bands)
    if (len(bands) != 3 or any(isinstance(b, bool) or not isinstance(b, int) for b in bands)
            or len(set(bands)) != 3 or not all(0 <= b < num_channels for b in bands)):
        raise ValueError(f"rgb_bands must be three distinct band indices in 0..{num_channels - 1} (the bands used "
                         f"as R, G, B), got {rgb_bands!r}.")
    embeddings = model.base_model.embeddings
    old = embeddings.projection
    weight = old.weight.detach().float()
    new_weight = weight.mean(dim=1, keepdim=True).repeat(1, num_channels, 1, 1)
    for rgb, band in enumerate(bands):
        new_weight[:, band] = weight[:, rgb]
    scale = 3.0 / num_channels if rescale else 1.0
    if rescale:
        new_weight = new_weight * scale
    projection = nn.Conv2d(num_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride)
    state = {"weight": new_weight.to(old.weight.dtype), "bias": old.bias.detach().clone()}
    projection.load_state_dict(state)
    embeddings.projection = projection.to(device=old.weight.device, dtype=old.weight.dtype)
    embeddings.num_channels = num_channels
    config.num_channels = num_channels
    config.band_adaptation = {"from_channels": 3, "rgb_bands": bands, "extra_init": "mean_rgb", "scale": scale}
    return model


# Configuration fields that change the function of the backbone and decoder weights (kept for callers that compare
# dictionaries; new code calls `S5Config.architecture_differences`).
BACKBONE_KEYS = BACKBONE_FIELDS + DECODER_FIELDS


def _check_same_backbone(a: S5Config, b: S5Config) -> None:
    diff = a.architecture_differences(b, tasks=False)
    if diff:
        raise ValueError(f"Backbone configurations differ: {diff} (source, target).")


# The image-segmentation pipeline checks the model's class name against this table (not against the registered Auto
# classes) and logs an error for every S5 model otherwise. Done here, not in s5_hf/__init__.py, so that it also
# holds where this file is loaded as remote code.
MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(S5Config.model_type, S5ForSemanticSegmentation.__name__)

__all__ = [
    "S5Backbone",
    "S5EncoderOutput",
    "S5ForSemanticSegmentation",
    "S5Model",
    "S5ModelOutput",
    "S5PreTrainedModel",
    "S5SemanticSegmenterOutput",
    "adapt_patch_embedding",
    "task_cross_entropy",
]
