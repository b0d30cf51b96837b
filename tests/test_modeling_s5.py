"""The S5 model family: shapes, routing, conversions between single- and multi-task models, loading, bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSemanticSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import s5_hf
from s5_hf import S5Backbone, S5Config, S5ForSemanticSegmentation, S5Model
from s5_hf.label_sets import MDF_TASKS, get_label_set
from s5_hf.modeling_s5 import S5MLP, TaskRouting, task_cross_entropy

DATA = Path(__file__).resolve().parent / "data"  # reference facts copied into the repository (see data/README.md)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    image_size=64,
    out_indices=[1, 2, 3, 4],
    decoder_hidden_size=16,
    part_features=8,
)


def tiny_config(tasks=MDF_TASKS, **overrides) -> S5Config:
    return S5Config(**{**TINY, "tasks": list(tasks), **overrides})


def tiny_model(tasks=MDF_TASKS, seed=0, **overrides) -> S5ForSemanticSegmentation:
    torch.manual_seed(seed)
    model = S5ForSemanticSegmentation(tiny_config(tasks, **overrides)).eval()
    _randomise_batchnorm(model)
    return model


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    # Fresh BatchNorm in eval mode is the identity; random statistics make the comparisons meaningful.
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


def images(batch=2, size=64, seed=0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_output_shapes_per_task():
    model = tiny_model()
    pixel_values = images()
    for name in MDF_TASKS:
        out = model(pixel_values, task=name)
        assert out.logits.shape == (2, get_label_set(name).num_classes, 64, 64)
        assert out.pooler_output.shape == (2, 32)
        assert out.task_ids.tolist() == [model.config.task_index(name)] * 2


def test_backbone_feature_strides():
    model = S5Model(tiny_config()).eval()
    out = model(images(1, 64))
    assert [tuple(f.shape[-2:]) for f in out.feature_maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert out.last_hidden_state.shape == (1, 16, 32)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(1))


def test_position_embeddings_interpolate_to_other_sizes():
    model = tiny_model(tasks=["isaid"])
    assert model(images(1, 96)).logits.shape == (1, 16, 96, 96)
    assert model(images(1, 64, seed=3)[:, :, :48, :]).logits.shape == (1, 16, 48, 64)


def test_single_task_model_has_no_experts():
    model = tiny_model(tasks=["isaid"])
    assert not model.config.use_experts
    assert not any("experts" in name for name, _ in model.named_parameters())
    assert model.s5.encoder.layer[0].mlp.fc2.out_features == 32


def test_expert_layout_follows_spec():
    mlp = tiny_model().s5.encoder.layer[0].mlp
    assert mlp.fc2.out_features == 32 - 8
    assert len(mlp.experts) == 4 and all(e.out_features == 8 for e in mlp.experts)


def test_mixed_batch_equals_running_each_group_separately():
    model = tiny_model()
    pixel_values = images(6)
    tasks = ["loveda", "vaihingen", "openearthmap", "potsdam", "vaihingen", "loveda"]
    labels = torch.randint(0, 5, (6, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mixed = model(pixel_values, task=tasks, labels=labels)
        for name in set(tasks):
            rows = [i for i, t in enumerate(tasks) if t == name]
            alone = model(pixel_values[rows], task=name, labels=labels[rows])
            k = alone.logits.shape[1]
            torch.testing.assert_close(mixed.logits[rows, :k], alone.logits, atol=1e-5, rtol=1e-5)
            # Channels beyond the task's classes never win the argmax.
            assert (mixed.logits[rows].argmax(1) == alone.logits.argmax(1)).all()
            torch.testing.assert_close(mixed.task_losses[name], alone.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.loss, sum(mixed.task_losses.values()))


class _GatherCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the elements that row gathers and scatters (index_select, index_copy, advanced indexing) produce."""

    OPS = ("index_select", "index_copy", "index.Tensor", "index_put")

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(name in str(func) for name in self.OPS) and isinstance(out, torch.Tensor):
            self.elements += out.numel()
        return out


@pytest.mark.parametrize("tasks", [["loveda", "loveda", "vaihingen", "vaihingen", "potsdam", "openearthmap"],
                                   ["loveda", "vaihingen", "openearthmap", "potsdam", "vaihingen", "loveda"]])
def test_mixed_batch_moves_only_the_input_and_the_small_logits(tasks):
    """The mixed forward runs sorted by task: experts and decoders take views of the batch. What is gathered is at
    most the input images and the stride-4 logits (once, to sort and unsort), never the FFN activations of every
    block or the neck's feature maps (before the fix: 8.7x this budget's elements here, +0.5 GB at 8 x 512 px)."""
    model = tiny_model()
    pixel_values = images(6)
    with torch.no_grad(), _GatherCounter() as counter:
        mixed = model(pixel_values, task=tasks)
    classes = mixed.logits.shape[1]
    budget = pixel_values.numel() + 6 * classes * 16 * 16 + 6 * model.config.hidden_size + 64
    if tasks[0] == tasks[1]:  # already grouped by task: nothing to sort (only per-row class counts are looked up)
        budget = 64
    assert counter.elements <= budget, (counter.elements, budget)


def test_backbone_alone_routes_an_unsorted_mixed_batch_like_each_group_alone():
    model = tiny_model().s5
    pixel_values = images(5)
    tasks = ["potsdam", "loveda", "potsdam", "vaihingen", "loveda"]
    with torch.no_grad():
        mixed = model(pixel_values, task=tasks, output_hidden_states=True)
        for name in set(tasks):
            rows = [i for i, t in enumerate(tasks) if t == name]
            alone = model(pixel_values[rows], task=name, output_hidden_states=True)
            for a, b in zip(mixed.feature_maps + mixed.hidden_states, alone.feature_maps + alone.hidden_states):
                torch.testing.assert_close(a[rows], b, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(mixed.pooler_output[rows], alone.pooler_output, atol=1e-6, rtol=1e-6)


def test_mixed_batch_gradients_match_separate_runs():
    model = tiny_model(drop_path_rate=0.0, classifier_dropout=0.0)
    pixel_values = images(4)
    tasks = ["potsdam", "loveda", "potsdam", "loveda"]
    labels = torch.randint(0, 5, (4, 64, 64), generator=torch.Generator().manual_seed(0))
    model.zero_grad()
    model(pixel_values, task=tasks, labels=labels).loss.backward()
    mixed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for name in ("potsdam", "loveda"):
        rows = [i for i, t in enumerate(tasks) if t == name]
        model(pixel_values[rows], task=name, labels=labels[rows]).loss.backward()
    separate = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert mixed.keys() == separate.keys()
    assert "s5.encoder.layer.0.mlp.experts.1.weight" in mixed  # potsdam's expert was trained
    assert "s5.encoder.layer.0.mlp.experts.0.weight" not in mixed  # vaihingen's was not in the batch
    for name in mixed:
        torch.testing.assert_close(mixed[name], separate[name], atol=1e-5, rtol=1e-4)


def test_task_given_as_indices_or_default():
    model = tiny_model()
    pixel_values = images(2)
    with torch.no_grad():
        by_name = model(pixel_values, task="openearthmap").logits
        by_index = model(pixel_values, task=torch.tensor([2, 2])).logits
        model.set_default_task("openearthmap")
        by_default = model(pixel_values).logits
    torch.testing.assert_close(by_name, by_index)
    torch.testing.assert_close(by_name, by_default)
    assert model.config.id2label == get_label_set("openearthmap").id2label


def test_extract_task_folds_expert_into_a_plain_model():
    model = tiny_model()
    plain = tiny_model(tasks=["potsdam"])
    single = model.extract_task("potsdam")
    assert single.config.task_names == ["potsdam"] and not single.config.use_experts
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(single) == count(plain)
    pixel_values = images(2)
    with torch.no_grad():
        torch.testing.assert_close(single(pixel_values).logits, model(pixel_values, task="potsdam").logits,
                                   atol=1e-5, rtol=1e-5)


def test_from_single_task_starts_every_task_at_the_pretrained_function():
    pretrained = tiny_model(tasks=["isaid"])
    moe = S5ForSemanticSegmentation.from_single_task(pretrained, tiny_config()).eval()
    pixel_values = images(2)
    with torch.no_grad():
        reference = pretrained.s5(pixel_values, task="isaid").feature_maps
        reference_decoded = pretrained.decoders[0](reference)
        for name in MDF_TASKS:
            maps = moe.s5(pixel_values, task=name).feature_maps
            for ours, theirs in zip(maps, reference):
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
            decoded = moe.decoders[moe.config.task_index(name)](maps)
            torch.testing.assert_close(decoded, reference_decoded, atol=1e-5, rtol=1e-5)


def test_from_single_task_rejects_other_backbones():
    pretrained = tiny_model(tasks=["isaid"])
    with pytest.raises(ValueError, match="hidden_size"):
        S5ForSemanticSegmentation.from_single_task(pretrained, tiny_config(hidden_size=64, part_features=16))


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(tasks=["vaihingen", "loveda"], drop_path_rate=0.0, classifier_dropout=0.0).train()
    pixel_values = images(4)
    labels = torch.randint(0, 5, (4, 64, 64), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        model(pixel_values, task=["vaihingen", "loveda"] * 2, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.s5.encoder.layer[0].gradient_checkpointing
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_sdpa_and_eager_attention_agree():
    sdpa = tiny_model(attn_implementation="sdpa")
    eager = tiny_model(attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    pixel_values = images(2)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(pixel_values, task="loveda").logits, eager(pixel_values, task="loveda").logits,
                                   atol=1e-5, rtol=1e-5)
        attn = eager(pixel_values, task="loveda", output_attentions=True).attentions
    assert len(attn) == 4 and attn[0].shape == (2, 2, 16, 16)


def test_hidden_states_are_returned_on_request():
    out = tiny_model()(images(1), task="potsdam", output_hidden_states=True)
    assert len(out.hidden_states) == 5 and out.hidden_states[0].shape == (1, 16, 32)


def test_loss_ignores_task_ignore_index_and_void():
    model = tiny_model(tasks=["vaihingen"])
    pixel_values = images(1)
    labels = torch.full((1, 64, 64), 5)  # clutter everywhere except one block
    labels[:, :8, :8] = 2
    labels[:, 8:16, :8] = 255
    out = model(pixel_values, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :, :8, :8], labels[:, :8, :8])
    torch.testing.assert_close(out.loss, expected)
    every_pixel_ignored = model(pixel_values, labels=torch.full((1, 64, 64), 255)).loss
    assert every_pixel_ignored.item() == 0.0 and every_pixel_ignored.requires_grad


def test_auto_classes_are_registered():
    config = tiny_config()
    assert isinstance(AutoConfig.for_model("s5", **TINY), S5Config)
    assert isinstance(AutoModel.from_config(config), S5Model)
    assert isinstance(AutoModelForSemanticSegmentation.from_config(config), S5ForSemanticSegmentation)


def test_backbone_plugs_into_transformers_upernet():
    backbone_config = tiny_config(tasks=["isaid"])
    config = UperNetConfig(backbone_config=backbone_config, hidden_size=16, num_labels=3, use_auxiliary_head=False)
    model = UperNetForSemanticSegmentation(config).eval()
    assert isinstance(model.backbone, S5Backbone)
    assert model.backbone.channels == [32] * 4
    assert model(images(1)).logits.shape == (1, 3, 64, 64)


def test_presets_match_the_paper_architecture():
    for name, width, depth, heads, blocks in [
        ("vit-b", 768, 12, 12, [3, 5, 7, 11]),
        ("vit-l", 1024, 24, 16, [7, 11, 15, 23]),
        ("vit-h", 1280, 32, 16, [15, 23, 27, 31]),
    ]:
        config = S5Config.from_preset(name)
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, depth, heads)
        assert [i - 1 for i in config.out_indices] == blocks
        assert config.intermediate_size == 4 * width and config.patch_size == 16 and config.drop_path_rate == 0.1
    with pytest.raises(ValueError, match="vit-b"):
        S5Config.from_preset("vit-g")


def test_drop_path_is_linear_over_depth_on_the_ffn_branch_only():
    with torch.device("meta"):
        model = S5Model(S5Config.from_preset("vit-b"))
    rates = [layer.drop_path.drop_prob for layer in model.encoder.layer]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(rates, rates[1:]))


def test_drop_path_in_training_drops_the_ffn_branch_and_never_the_attention_branch():
    # Each block computes out = x + attention(x') + drop_path(ffn(h')); hooks record every term, so the residual
    # decomposition says which branch stochastic depth acted on.
    torch.manual_seed(0)
    model = S5Model(tiny_config(tasks=["isaid"], drop_path_rate=0.5)).train()
    layer = model.encoder.layer[-1]
    keep = 1 - layer.drop_path.drop_prob
    assert layer.drop_path.drop_prob == pytest.approx(0.5)
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0].detach()))
    layer.attention.register_forward_hook(lambda m, args, out: seen.__setitem__("attention", out[0].detach()))
    layer.mlp.register_forward_hook(lambda m, args, out: seen.__setitem__("ffn", out.detach()))
    layer.register_forward_hook(lambda m, args, out: seen.__setitem__("output", out[0].detach()))
    hidden = torch.randn(16, 16, 32, generator=torch.Generator().manual_seed(0))
    routing = TaskRouting(torch.zeros(16, dtype=torch.long))
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            layer(hidden, routing)
        ffn_term = seen["output"] - seen["input"] - seen["attention"]  # what the FFN branch added
        runs.append({"attention": seen["attention"], "ffn": seen["ffn"], "ffn_term": ffn_term})
        # Per sample the FFN branch is either dropped or rescaled by 1/keep; the attention term is added as is.
        kept = ffn_term.flatten(1).abs().amax(1) > 0.5 * seen["ffn"].flatten(1).abs().amax(1)
        torch.testing.assert_close(ffn_term[kept], seen["ffn"][kept] / keep, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ffn_term[~kept], torch.zeros_like(ffn_term[~kept]), atol=1e-5, rtol=0)
        assert 0 < int(kept.sum()) < 16  # both outcomes occur in a batch of 16 at p = 0.5 (for these seeds)
    torch.testing.assert_close(runs[0]["attention"], runs[1]["attention"], rtol=0, atol=0)  # deterministic
    torch.testing.assert_close(runs[0]["ffn"], runs[1]["ffn"], rtol=0, atol=0)  # same FFN output ...
    assert not torch.equal(runs[0]["ffn_term"], runs[1]["ffn_term"])  # ... but a different sample dropped
    with torch.no_grad():  # and in eval mode nothing is dropped
        layer.eval()(hidden, routing)
    torch.testing.assert_close(seen["output"], seen["input"] + seen["attention"] + seen["ffn"], atol=1e-6, rtol=1e-6)


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights for the four neighbours at offsets -1, 0, 1, 2 of a point t in [0, 1)."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Resampling matrix (size_out x size_in): half-pixel centres, edge samples repeated, a = -0.75."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = (i + 0.5) * size_in / size_out - 0.5
        base = math.floor(x)
        for offset, weight in zip(range(-1, 3), _cubic_weights(x - base)):
            matrix[i, min(max(base + offset, 0), size_in - 1)] += weight
    return matrix


def test_position_embeddings_are_interpolated_bicubically():
    model = S5Model(tiny_config(tasks=["isaid"])).eval()
    embeddings = model.embeddings
    grid = embeddings.grid_size  # 4x4 learned positions (64 px / 16)
    table = embeddings.position_embeddings.detach().reshape(grid, grid, -1).double().numpy()
    for height, width in [(6, 3), (8, 8), (2, 5)]:
        rows, cols = _bicubic_matrix(grid, height), _bicubic_matrix(grid, width)
        expected = np.einsum("hi,wj,ijc->hwc", rows, cols, table).reshape(height * width, -1)
        ours = embeddings.interpolate_pos_encoding(height, width)[0].detach().double().numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    # The training size uses the table as it is, and the forward pass adds exactly these values.
    assert embeddings.interpolate_pos_encoding(grid, grid) is embeddings.position_embeddings
    pixel_values = images(1, 96)
    with torch.no_grad():
        tokens, _ = embeddings(pixel_values)
        patches = embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
    expected = np.einsum("hi,wj,ijc->hwc", _bicubic_matrix(grid, 6), _bicubic_matrix(grid, 6), table).reshape(36, -1)
    np.testing.assert_allclose((tokens - patches)[0].double().numpy(), expected, atol=1e-5, rtol=0)


# ---- bad input ----------------------------------------------------------------------------------------------
def test_wrong_band_count_is_rejected():
    with pytest.raises(ValueError, match="expects 3 input bands but pixel_values has 4"):
        tiny_model()(torch.randn(1, 4, 64, 64), task="potsdam")


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vaihingen, potsdam, openearthmap, loveda"):
        tiny_model()(images(1), task="dota")
    with pytest.raises(ValueError, match="Unknown task"):
        tiny_config(tasks=["vaihingen", "not-a-dataset"])


def test_label_ids_out_of_range_are_rejected():
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"potsdam: label ids \[7\] are outside the 5 classes"):
        tiny_model()(images(1), task="potsdam", labels=labels)


def test_image_size_must_be_a_multiple_of_the_patch_size():
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        tiny_model()(torch.randn(1, 3, 70, 64), task="potsdam")


def test_training_needs_two_images_per_task_and_says_so_before_the_backbone_runs():
    model = tiny_model().train()
    backbone_calls = []
    model.s5.register_forward_pre_hook(lambda module, args: backbone_calls.append(1))
    with pytest.raises(ValueError, match=r"at least 2 images.*\['loveda'\].*model.eval\(\)"):
        model(images(3), task=["potsdam", "potsdam", "loveda"])
    assert backbone_calls == []  # refused before any compute (a ViT-B forward takes ~50 s on 2 CPU cores)
    model(images(4), task=["potsdam", "loveda"] * 2)
    assert backbone_calls == [1, 1]  # on CPU a mixed batch runs the backbone once per task


def test_every_input_check_runs_before_the_backbone():
    model = tiny_model()
    backbone_calls = []
    model.s5.register_forward_pre_hook(lambda module, args: backbone_calls.append(1))
    bad_pixels = images(2)
    bad_pixels[1, 2, 5, 5] = float("nan")
    for call in [dict(pixel_values=bad_pixels), dict(pixel_values=images(2, 16)),
                 dict(pixel_values=images(2), labels=torch.zeros(2, 64, 64)),
                 dict(pixel_values=images(2), task=torch.tensor([0.0, 1.0]))]:
        with pytest.raises(ValueError):
            model(**{"task": "potsdam", **call})
    assert backbone_calls == []


def test_smallest_input_is_two_patches_per_side():
    # The neck max-pools the stride-16 grid to stride 32, so one patch per side leaves nothing to pool.
    model = tiny_model(tasks=["isaid"])
    for height, width in [(32, 32), (32, 512), (48, 32)]:
        assert model(torch.randn(1, 3, height, width)).logits.shape == (1, 16, height, width)
    for height, width in [(16, 16), (16, 512), (512, 16), (32, 16)]:
        with pytest.raises(ValueError, match=rf"{height}x{width} is too small: S5 needs at least 32x32 pixels"):
            model(torch.randn(1, 3, height, width))
    with pytest.raises(ValueError, match="at least 32x32"):  # the backbone alone says the same
        S5Model(tiny_config()).eval()(torch.randn(1, 3, 16, 64))


def test_nan_or_inf_input_is_refused_with_counts_per_band():
    pixel_values = images(2)
    pixel_values[0, 0, :3, :3] = float("nan")
    pixel_values[1, 2, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"10 NaN/Inf values \(band 0: 9, band 2: 1\)"):
        tiny_model()(pixel_values, task="potsdam")


def test_task_tensor_must_hold_integers():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"integer task indices, got dtype torch.float32 \(\[1.7"):
        model(images(2), task=torch.tensor([1.7, 0.2]))
    with pytest.raises(ValueError, match="got dtype torch.bool"):
        model(images(2), task=torch.tensor([True, False]))
    with torch.no_grad():  # integer tensors of any integer dtype still work
        torch.testing.assert_close(model(images(2), task=torch.tensor([1, 3], dtype=torch.int32)).task_ids,
                                   torch.tensor([1, 3]))


def test_float_labels_are_refused_not_truncated():
    model = tiny_model(tasks=["vaihingen"])
    labels = torch.full((1, 64, 64), 1.7)
    with pytest.raises(ValueError, match="integer tensor of class ids, got dtype torch.float32"):
        model(images(1), labels=labels)
    with pytest.raises(ValueError, match="got dtype torch.float16"):
        task_cross_entropy(torch.zeros(1, 5, 4, 4), torch.zeros(1, 4, 4, dtype=torch.float16), 255)


def test_architecture_differences_name_every_field_that_changes_the_function():
    base = tiny_config()
    assert base.architecture_differences(tiny_config()) == {}
    assert base.architecture_differences(base.to_dict()) == {}  # a saved config.json compares the same way
    for field, value in [("num_attention_heads", 4), ("layer_norm_eps", 1e-6), ("neck_layer_norm_eps", 1e-5),
                         ("hidden_act", "relu"), ("qkv_bias", False), ("pool_scales", [1, 2, 3]),
                         ("logits_align_corners", False), ("hidden_size", 64), ("mlp_ratio", 2.0)]:
        other = tiny_config(**{field: value, **({"part_features": 16} if field == "hidden_size" else {})})
        assert field in base.architecture_differences(other), field
    deeper = tiny_config(num_hidden_layers=5, out_indices=[1, 2, 3, 5])
    assert set(deeper.architecture_differences(tiny_config(num_hidden_layers=5, out_indices=[2, 3, 4, 5]))) == {
        "out_indices"}
    # Training-only settings and the default task do not change the function of the weights.
    assert base.architecture_differences(tiny_config(drop_path_rate=0.3, classifier_dropout=0.0,
                                                     attention_probs_dropout_prob=0.1, default_task="loveda")) == {}
    diff = base.architecture_differences(tiny_config(tasks=["potsdam", "vaihingen"]))
    assert set(diff) == {"tasks (name, classes)"}
    assert set(base.architecture_differences(tiny_config(part_features=16))) == {"part_features"}
    assert base.architecture_differences(tiny_config(tasks=["potsdam"]), tasks=False) == {}


def test_from_single_task_rejects_a_backbone_with_other_layer_norms():
    pretrained = tiny_model(tasks=["isaid"])
    with pytest.raises(ValueError, match="layer_norm_eps"):
        S5ForSemanticSegmentation.from_single_task(pretrained, tiny_config(layer_norm_eps=1e-6))


def test_from_official_delegates_to_the_converter(monkeypatch):
    import s5_hf.convert_official

    calls = []
    sentinel = object()
    monkeypatch.setattr(s5_hf.convert_official, "from_official",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or sentinel)
    assert S5ForSemanticSegmentation.from_official("lianglyu/S5", "s5_vitb.pth", num_attention_heads=2) is sentinel
    assert calls == [(("lianglyu/S5", "s5_vitb.pth"), {"num_attention_heads": 2})]


def test_readme_models_example_runs_as_written(monkeypatch):
    # The README's first code block, with the ViT-B preset swapped for a tiny backbone (same tasks, same calls).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## Models", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert 'S5Config.from_preset("vit-b"' in code
    real_from_preset = S5Config.from_preset.__func__
    monkeypatch.setattr(S5Config, "from_preset", classmethod(
        lambda cls, preset, **kwargs: real_from_preset(cls, preset, **{**TINY, "num_attention_heads": 2, **kwargs})))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["out"].logits.shape == (4, 9, 512, 512)
    assert namespace["potsdam_only"].config.task_names == ["potsdam"]


def test_task_list_length_must_match_the_batch():
    with pytest.raises(ValueError, match="3 task names for a batch of 2"):
        tiny_model()(images(2), task=["potsdam"] * 3)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        S5Config(**{**TINY, "num_attention_heads": 3})
    with pytest.raises(ValueError, match="four feature stages"):
        S5Config(**{**TINY, "out_indices": [2, 4]})
    with pytest.raises(ValueError, match="unique"):
        tiny_config(tasks=["potsdam", "potsdam"])
    with pytest.raises(ValueError, match="part_features"):
        tiny_config(part_features=32)


def test_package_exports():
    assert set(s5_hf.__all__) >= {"S5Config", "S5Model", "S5Backbone", "S5ForSemanticSegmentation", "S5ImageProcessor"}


def test_readme_parameter_table_matches_the_recorded_official_and_paper_counts():
    facts = json.loads((DATA / "spec" / "parameter_counts.json").read_text())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        match = re.fullmatch(r"\| ViT-([BLH]) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) / ([\d.]+) M \|", line.strip())
        if match:
            rows[f"vit-{match[1].lower()}"] = [int(match[2].replace(",", "")), int(match[3].replace(",", "")),
                                               float(match[4]), float(match[5])]
    assert set(rows) == {"vit-b", "vit-l", "vit-h"}
    unused = facts["unused_in_official"]["placeholder_classifier_per_decoder"]
    for preset, (single, multiple, paper_single, paper_multiple) in rows.items():
        width = S5Config.from_preset(preset).hidden_size
        # Ours + the official model's unused class token and placeholder classifiers = the official totals.
        assert single + width + unused == facts["official_totals"][preset]["single"]
        assert multiple + width + 4 * unused == facts["official_totals"][preset]["multiple"]
        assert [paper_single, paper_multiple] == [facts["paper_millions"][preset][v] for v in ("single", "multiple")]
    with torch.device("meta"):  # and the code builds the ViT-B numbers of the table
        assert sum(p.numel() for p in S5ForSemanticSegmentation(
            S5Config.from_preset("vit-b", tasks=list(MDF_TASKS))).parameters()) == rows["vit-b"][1]


def test_mixed_batch_task_by_task_equals_one_forward(monkeypatch):
    """On CPU a mixed batch runs the backbone one task at a time; GPUs run one forward of the whole batch. Both paths
    give the same logits, losses and pooled outputs in the caller's row order."""
    model = tiny_model().eval()
    pixels, tasks = images(5), ["loveda", "potsdam", "loveda", "vaihingen", "potsdam"]
    labels = torch.randint(0, 5, (5, 64, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        split = model(pixels, task=tasks, labels=labels)
        monkeypatch.setattr(type(model), "_task_by_task", lambda self, *args: False)
        whole = model(pixels, task=tasks, labels=labels)
    torch.testing.assert_close(split.logits, whole.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.pooler_output, whole.pooler_output, atol=1e-6, rtol=1e-5)
    assert split.task_losses.keys() == whole.task_losses.keys()
    for name in split.task_losses:
        torch.testing.assert_close(split.task_losses[name], whole.task_losses[name])


@pytest.mark.parametrize("grad", [True, False])
def test_neck_upsampling_equals_the_transposed_convolution(grad):
    """`S5Upsample2x` (matmuls; one path with gradients, one without) computes nn.ConvTranspose2d(2, stride 2): the
    same outputs and, in training, the same gradients."""
    from s5_hf.modeling_s5 import S5Upsample2x

    torch.manual_seed(0)
    layer = S5Upsample2x(8)
    torch.nn.init.normal_(layer.bias)
    reference = torch.nn.ConvTranspose2d(8, 8, kernel_size=2, stride=2)
    reference.load_state_dict(layer.state_dict())
    tokens = torch.randn(2, 6 * 5, 8)  # the neck's input: stage tokens viewed as a channels-last NCHW map
    x = tokens.transpose(1, 2).reshape(2, 8, 6, 5).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out, expected = layer(x), reference(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 8, 12, 10)
    if grad:
        weights = torch.randn_like(expected)
        ours = torch.autograd.grad((out * weights).sum(), [x, layer.weight, layer.bias])
        theirs = torch.autograd.grad((expected * weights).sum(), [x, reference.weight, reference.bias])
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("grad", [True, False])
def test_neck_upsampling_composed_with_a_1x1_projection_equals_the_two_layers(grad):
    """`S5Upsample2x(x, projection)` computes conv1x1(upsample(x)) (the decoder's first lateral convolution,
    composed): same outputs and, in training, the same gradients for the input, the upsampling and the projection."""
    from s5_hf.modeling_s5 import S5Upsample2x

    torch.manual_seed(0)
    layer = S5Upsample2x(8)
    torch.nn.init.normal_(layer.bias)
    conv = nn.Conv2d(8, 3, 1, bias=False)
    x = torch.randn(2, 8, 6, 5).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out, expected = layer(x, conv.weight.flatten(1)), conv(layer(x))
    assert out.shape == (2, 3, 12, 10)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if grad:
        weights = torch.randn_like(expected)
        inputs = [x, layer.weight, layer.bias, conv.weight]
        ours = torch.autograd.grad((out * weights).sum(), inputs)
        theirs = torch.autograd.grad((expected * weights).sum(), inputs)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_composed_neck_and_decoder_give_the_module_path_logits_and_gradients(train):
    """`_decode` composes the neck's last upsampling with the first lateral convolution; a hooked convolution makes
    it run the modules one by one, which must give the same logits (and gradients)."""
    model = tiny_model(tasks=["potsdam"]).train(train)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 6, (2, 64, 64))
    lateral = model.decoders[0].lateral_convs[0]
    conv = lateral[0]
    assert model.s5.neck.composes_with(lateral)
    # Every module whose call the composition skips keeps the module path when hooked.
    for skipped in (conv, lateral, model.s5.neck.to_stride4, model.s5.neck.to_stride4[-1]):
        handle = skipped.register_forward_pre_hook(lambda module, args: None)
        assert not model.s5.neck.composes_with(lateral)
        handle.remove()
    results = []
    for hooked in (False, True):
        handle = conv.register_forward_hook(lambda module, args, out: None) if hooked else None
        assert model.s5.neck.composes_with(lateral) is not hooked
        model.zero_grad()
        torch.manual_seed(1)
        out = model(images, labels=labels)
        if train:
            out.loss.backward()
        results.append((out.logits.detach(), conv.weight.grad, model.s5.neck.to_stride4[-1].weight.grad))
        if handle:
            handle.remove()
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    if train:
        for a, b in zip(results[0][1:], results[1][1:]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # Module hooks that track autograd (FlopCounterMode's ModuleTracker) accept the composed call, also without
    # gradients (the S4P teacher's forward).
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    assert counter.get_total_flops() > 0


def test_modules_with_replaced_forward_are_not_composed_or_fused():
    # accelerate's hooks (offloading) replace an instance's forward to bring its weights in first: such a module must
    # be called, not have its weights read directly.
    from accelerate.hooks import ModelHook, add_hook_to_module

    from s5_hf.modeling_s5 import _plain

    model = tiny_model(tasks=["potsdam"])
    lateral, fc2 = model.decoders[0].lateral_convs[0], model.s5.encoder.layer[0].mlp.fc2
    conv = lateral[0]
    assert _plain(conv, nn.Conv2d) and _plain(fc2, nn.Linear)
    calls = []

    class Count(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            calls.append(type(module).__name__)
            return args, kwargs

    add_hook_to_module(conv, Count())
    add_hook_to_module(fc2, Count())
    assert not model.s5.neck.composes_with(lateral) and not _plain(fc2, nn.Linear)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert sorted(calls) == ["Conv2d", "Linear"]


def test_single_task_ffn_is_one_product_and_a_wrapped_or_hooked_projection_is_still_called():
    # One task: the shared and expert output projections run as one product of the stacked weights. A wrapped
    # projection (PEFT's LoRA layers replace the module) or a hooked one must still run as a module.
    torch.manual_seed(0)
    config = tiny_config(tasks=["vaihingen", "loveda"], part_features=8)
    mlp = S5MLP(config)
    hidden = torch.randn(2, 5, config.hidden_size)
    routing = TaskRouting(torch.ones(2, dtype=torch.long))
    inner = mlp.act(mlp.fc1(hidden))
    expected = torch.cat([mlp.fc2(inner), mlp.experts[1](inner)], dim=-1)
    torch.testing.assert_close(mlp(hidden, routing), expected, rtol=0, atol=1e-6)
    calls = []
    handle = mlp.experts[1].register_forward_hook(lambda module, args, out: calls.append(out.shape))
    torch.testing.assert_close(mlp(hidden, routing), expected, rtol=0, atol=1e-6)
    assert calls == [(2, 5, 8)]
    handle.remove()

    class Doubled(nn.Linear):  # stands for a wrapper that changes what the module computes
        def forward(self, x):
            return 2 * super().forward(x)

    doubled = Doubled(config.intermediate_size, 8)
    doubled.load_state_dict(mlp.experts[1].state_dict())
    mlp.experts[1] = doubled
    torch.testing.assert_close(mlp(hidden, routing)[..., -8:], 2 * expected[..., -8:], rtol=0, atol=1e-6)
