"""Activation checkpointing modes (`S5PreTrainedModel.set_activation_checkpointing`): every mode gives the loss and
gradients of no checkpointing, recomputes what it says, and nothing else; plus the routing and encoder output the
modes run on."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.modeling_s5 import S5EncoderOutput, TaskRouting, parse_activation_checkpointing

MODES = ["elementwise", "attention", "mlp", "block", "block:2", "mlp:3", "elementwise:2"]
TASKS = ["potsdam", "loveda", "potsdam", "loveda"]  # interleaved: the mixed batch runs sorted by task
INTERMEDIATE = 128  # tiny_model's FFN width (4 x hidden)


def tiny_model(**overrides) -> S5ForSemanticSegmentation:
    torch.manual_seed(0)
    values = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, out_indices=[1, 2, 3, 4],
                  decoder_hidden_size=16, part_features=8, tasks=["potsdam", "loveda"], drop_path_rate=0.3,
                  attention_probs_dropout_prob=0.1)
    values.update(overrides)
    return S5ForSemanticSegmentation(S5Config(**values)).train()


def batch(size: int = 4):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 6, (size, 64, 64), generator=generator)
    labels[:, :3] = 255
    return images, labels


def loss_and_grads(model, mode: str, tasks=TASKS):
    model.set_activation_checkpointing(mode)
    images, labels = batch(len(tasks))
    torch.manual_seed(123)  # drop path and attention dropout draw from this state
    loss = model(images, task=tasks, labels=labels).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.fixture(scope="module")
def reference():
    model = tiny_model()
    return model, loss_and_grads(copy.deepcopy(model), "none")


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_gives_the_loss_and_gradients_of_no_checkpointing(reference, mode):
    model, (loss, grads) = reference
    checkpointed_loss, checkpointed = loss_and_grads(copy.deepcopy(model), mode)
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-5, rtol=1e-5)
    assert checkpointed.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(checkpointed[name], grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_drop_path_is_active_so_the_equality_covers_its_masks(reference):
    # Without the restored RNG state, the recomputation would draw new drop-path masks: two unseeded runs differ.
    model, (loss, _) = reference
    images, labels = batch()
    other = model(images, task=TASKS, labels=labels).loss
    assert not torch.allclose(other, loss)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        if name == "addmm" and args[1].shape[-1] == INTERMEDIATE:  # the FFN's output projection, forward
            self.counts["addmm intermediate"] = self.counts.get("addmm intermediate", 0) + 1
        return func(*args, **(kwargs or {}))


def backward_ops(mode: str) -> dict[str, int]:
    """Ops run during the backward pass: recomputed forward ops show up here. (Without attention dropout, as in the
    presets, attention is one fused kernel.)"""
    model = tiny_model(attention_probs_dropout_prob=0.0)
    assert model.config.intermediate_size == INTERMEDIATE
    if mode is None:  # transformers' own API
        model.activation_checkpointing_enable()
    else:
        model.set_activation_checkpointing(mode)
    images, labels = batch()
    loss = model(images, task="potsdam", labels=labels).loss
    with _CountOps() as counter:
        loss.backward()
    return counter.counts


@pytest.mark.parametrize("mode, norms, linears, attention", [
    ("none", 0, False, 0),
    ("elementwise", 8, False, 0),  # both norms of 4 blocks again; matmul and attention outputs come from the cache
    ("attention", 4, True, 4),  # norm, projections and attention of 4 blocks
    ("mlp", 4, True, 0),  # norm and FFN of 4 blocks
    ("block", 8, True, 0),  # all but the attention kernel, whose output is kept
    ("block:2", 4, True, 0),  # blocks 0 and 2
])
def test_each_mode_recomputes_what_it_says(mode, norms, linears, attention):
    counts = backward_ops(mode)
    assert counts.get("native_layer_norm", 0) == norms
    assert (counts.get("addmm", 0) > 0) == linears
    assert sum(v for k, v in counts.items() if k.startswith("_scaled_dot_product") and "backward" not in k) == attention
    # No mode runs the FFN's output projection again: the backward pass needs only its inputs. (In "block", the
    # drop-path mask saved after it would make the recomputation run it, were the residual inside the checkpoint.)
    assert counts.get("addmm intermediate", 0) == 0


def test_transformers_api_recomputes_the_whole_block():
    counts = backward_ops(None)
    assert counts.get("addmm intermediate", 0) > 0 and counts.get("native_layer_norm", 0) == 8


def test_mode_is_read_back_and_reset_and_transformers_api_still_works():
    model = tiny_model()
    assert model.activation_checkpointing == "none"
    for mode in MODES:
        model.set_activation_checkpointing(mode)
        assert model.activation_checkpointing == mode
    model.set_activation_checkpointing("mlp")
    model.set_activation_checkpointing("none")  # one option: a new mode replaces the previous one entirely
    assert model.activation_checkpointing == "none" and not model.is_activation_checkpointing
    model.activation_checkpointing_enable()
    assert model.activation_checkpointing == "block"
    model.activation_checkpointing_disable()
    model.set_activation_checkpointing("attention:2")
    assert [layer.activation_checkpointing for layer in model.s5.encoder.layer] == ["attention", "none"] * 2
    with torch.no_grad():  # inference never recomputes, whatever the mode
        model.eval()(batch(2)[0], task="potsdam")


@pytest.mark.parametrize("mode", ["blocks", "block:0", "mlp:x", "", "attention:-1"])
def test_unknown_modes_are_refused_naming_the_choices(mode):
    with pytest.raises(ValueError, match="Unknown activation checkpointing mode.*elementwise, attention, mlp, block"):
        parse_activation_checkpointing(mode)
    with pytest.raises(ValueError, match="Unknown activation checkpointing mode"):
        tiny_model().set_activation_checkpointing(mode)


def test_sorted_routing_is_derived_without_a_second_routing():
    routing = TaskRouting(torch.tensor([1, 0, 1, 2, 0]))
    order, sorted_routing = routing.sorted_by_task()
    assert order.tolist() == [1, 4, 0, 2, 3]
    assert sorted_routing.task_ids.tolist() == [0, 0, 1, 1, 2]
    assert sorted_routing.slices == [(0, slice(0, 2)), (1, slice(2, 4)), (2, slice(4, 5))]
    rebuilt = TaskRouting(sorted_routing.task_ids)  # what the forward used to compute a second time
    assert [(t, r.tolist()) for t, r in sorted_routing.groups] == [(t, r.tolist()) for t, r in rebuilt.groups]
    assert rebuilt.slices == sorted_routing.slices
    contiguous = TaskRouting(torch.tensor([0, 0, 1]))
    assert contiguous.sorted_by_task() == (None, contiguous)
    single = TaskRouting(torch.tensor([2, 2]))
    assert single.sorted_by_task() == (None, single)


def test_routing_is_read_on_the_host_once_per_forward(monkeypatch):
    model = tiny_model().eval()
    calls = {"n": 0}
    real = TaskRouting.__init__

    def counting(self, task_ids):
        calls["n"] += 1
        real(self, task_ids)

    monkeypatch.setattr(TaskRouting, "__init__", counting)
    with torch.no_grad():
        model(batch()[0], task=TASKS)
    assert calls["n"] == 1


def test_encoder_returns_the_requested_stages_in_order():
    model = tiny_model(num_hidden_layers=5, out_indices=[2, 3, 4, 5]).eval()
    embeddings, _ = model.s5.embeddings(batch(2)[0])
    with torch.no_grad():
        out = model.s5.encoder(embeddings, TaskRouting.whole_batch(0), model.config.out_indices,
                               output_hidden_states=True)
    assert isinstance(out, S5EncoderOutput)
    assert len(out.stages) == 4
    for stage, index in zip(out.stages, [2, 3, 4, 5]):
        assert torch.equal(stage, out.hidden_states[index])
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
