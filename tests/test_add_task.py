"""issue 9: `add_task` keeps every old task bit-identical, `--train_only_new` keeps it so after training, and an RGB
checkpoint adapted to N bands (`adapt_patch_embedding`) reproduces the RGB model."""

from __future__ import annotations

import json

import pytest
import torch

from s5_hf import S5ForSemanticSegmentation
from s5_hf.modeling_s5 import adapt_patch_embedding
from s5_hf.training import mdf as finetune

CROPS = {"name": "mycrops", "id2label": {0: "soil", 1: "wheat", 2: "maize"}, "ignore_index": 255}


# Every BatchNorm gets non-trivial running statistics (randomize_batchnorm, as after training), so that copies and
# eval mode matter.
@pytest.fixture
def mdf_model(tiny_config, randomize_batchnorm):
    """`mdf_model(part_features=8)`: a seeded two-task (Vaihingen, Potsdam) tiny model in eval mode."""

    def make(part_features: int = 8) -> S5ForSemanticSegmentation:
        torch.manual_seed(0)
        config = tiny_config(tasks=["vaihingen", "potsdam"], part_features=part_features)
        return randomize_batchnorm(S5ForSemanticSegmentation(config)).eval()

    return make


def old_logits(model, pixels):
    with torch.no_grad():
        return {name: model(pixels, task=name).logits for name in ("vaihingen", "potsdam")}


@pytest.mark.parametrize("part_features", [8, 0])
def test_add_task_keeps_every_old_task_bit_identical(mdf_model, part_features, tmp_path):
    model = mdf_model(part_features)
    pixels = torch.randn(2, 3, 64, 64)
    before = old_logits(model, pixels)
    with torch.no_grad():
        mixed_before = model(pixels, task=["potsdam", "vaihingen"]).logits
    model.add_task(CROPS, init_from="potsdam")
    after = old_logits(model, pixels)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert model.config.task_names == ["vaihingen", "potsdam", "mycrops"]
    with torch.no_grad():
        new = model(pixels, task="mycrops").logits
        # A mixed batch with the new task gives the old tasks' rows (rows [p0, p1, p0, p1]).
        mixed = model(pixels.repeat(2, 1, 1, 1), task=["potsdam", "mycrops", "mycrops", "vaihingen"]).logits
    assert new.shape == (2, 3, 64, 64)
    assert torch.allclose(mixed[0], mixed_before[0], atol=1e-5) and torch.allclose(mixed[3], mixed_before[1], atol=1e-5)
    if part_features:
        assert len(model.s5.encoder.layer[0].mlp.experts) == 3
        expert, source = model.s5.encoder.layer[0].mlp.experts[2], model.s5.encoder.layer[0].mlp.experts[1]
        assert torch.equal(expert.weight, source.weight) and expert.weight is not source.weight
    else:
        assert model.s5.encoder.layer[0].mlp.experts is None
    assert torch.equal(model.decoders[2].fpn_bottleneck[0].weight, model.decoders[1].fpn_bottleneck[0].weight)
    # The classifier is new, initialised as every S5 layer (truncated normal, std initializer_range, zero bias).
    classifier = model.classifiers[2][1]
    assert abs(classifier.weight.std().item() - model.config.initializer_range) < 0.01
    assert not classifier.bias.any() and not model.classifiers[2].training  # follows the model (eval)
    # Saved and loaded, the extended model is the same model.
    model.save_pretrained(tmp_path / "m")
    loaded = S5ForSemanticSegmentation.from_pretrained(tmp_path / "m").eval()
    reloaded = old_logits(loaded, pixels)
    for name in before:
        assert torch.equal(before[name], reloaded[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(pixels, task="mycrops").logits, new)


def test_add_task_errors_name_the_problem(mdf_model, tiny_config):
    model = mdf_model()
    with pytest.raises(ValueError, match="Unknown task 'nosuch'"):
        model.add_task(CROPS, init_from="nosuch")
    with pytest.raises(ValueError, match="unique"):
        model.add_task({**CROPS, "name": "potsdam"})
    with pytest.raises(ValueError, match="Unknown task 'mydata'"):
        model.add_task("mydata")
    assert model.config.task_names == ["vaihingen", "potsdam"] and len(model.decoders) == 2
    single = S5ForSemanticSegmentation(tiny_config(tasks=["vaihingen"], part_features=8))
    with pytest.raises(ValueError, match="from_single_task"):
        single.add_task(CROPS)


# ---- RGB checkpoint on N bands -------------------------------------------------------------------------------
@pytest.fixture
def rgb_model(tiny_config, randomize_batchnorm):
    """`rgb_model()`: a seeded single-task (Vaihingen) RGB tiny model in eval mode."""

    def make() -> S5ForSemanticSegmentation:
        torch.manual_seed(0)
        return randomize_batchnorm(S5ForSemanticSegmentation(tiny_config(tasks=["vaihingen"]))).eval()

    return make


def zero_extra_filters(model, rgb_bands, factor: float = 1.0) -> None:
    projection = model.s5.embeddings.projection
    weight = torch.zeros_like(projection.weight)
    for band in rgb_bands:
        weight[:, band] = projection.weight[:, band] * factor
    projection.load_state_dict({"weight": weight, "bias": projection.bias.detach()})


@pytest.mark.parametrize("bands", [4, 13])
def test_adapted_model_with_zero_extra_filters_reproduces_the_rgb_model(rgb_model, bands, tmp_path):
    model = rgb_model()
    rgb = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(rgb).logits
    rgb_bands = (2, 1, 0)  # the user's band order is B, G, R, extra...: R is band 2
    stacked = torch.cat([rgb[:, [2, 1, 0]], torch.randn(2, bands - 3, 64, 64)], dim=1)

    # rescale=False: the RGB filters are copied as they are; zeroing the extra filters leaves the RGB model.
    plain = adapt_patch_embedding(rgb_model(), bands, rgb_bands=rgb_bands, rescale=False)
    extra = [b for b in range(bands) if b not in rgb_bands]
    mean_filter = model.s5.embeddings.projection.weight.mean(dim=1)
    assert torch.allclose(plain.s5.embeddings.projection.weight[:, extra[0]], mean_filter)
    zero_extra_filters(plain, rgb_bands)
    with torch.no_grad():
        torch.testing.assert_close(plain(stacked).logits, expected, atol=1e-5, rtol=1e-5)

    # rescale=True (default): the kernel is 3/N of the above; undoing the factor gives the RGB model again.
    scaled = adapt_patch_embedding(rgb_model(), bands, rgb_bands=rgb_bands)
    assert scaled.config.band_adaptation == {"from_channels": 3, "rgb_bands": [2, 1, 0], "extra_init": "mean_rgb",
                                             "scale": 3 / bands}
    with torch.no_grad():
        assert not torch.allclose(scaled(stacked).logits, expected, atol=1e-3)
    zero_extra_filters(scaled, rgb_bands, factor=bands / 3)
    with torch.no_grad():
        torch.testing.assert_close(scaled(stacked).logits, expected, atol=1e-5, rtol=1e-5)

    # Saved and loaded: the N-band layer and the record come back.
    adapted = adapt_patch_embedding(rgb_model(), bands, rgb_bands=rgb_bands)
    adapted.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["num_channels"] == bands and saved["band_adaptation"]["rgb_bands"] == [2, 1, 0]
    loaded = S5ForSemanticSegmentation.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.num_channels == bands and loaded.config.band_adaptation["scale"] == 3 / bands
    with torch.no_grad():
        assert torch.equal(loaded(stacked).logits, adapted(stacked).logits)
    with pytest.raises(ValueError, match="bands"):
        loaded(rgb)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_channels": 2}, "num_channels must be an integer >= 3"),
    ({"num_channels": 4, "rgb_bands": (0, 1, 4)}, "rgb_bands must be three distinct band indices in 0..3"),
    ({"num_channels": 4, "rgb_bands": (0, 0, 1)}, "rgb_bands must be three distinct"),
])
def test_adapt_patch_embedding_errors_name_the_problem(rgb_model, kwargs, message):
    model = rgb_model()
    with pytest.raises(ValueError, match=message):
        adapt_patch_embedding(model, **kwargs)
    assert model.config.num_channels == 3 and model.s5.embeddings.projection.in_channels == 3
    adapt_patch_embedding(model, 5)
    with pytest.raises(ValueError, match="needs an RGB model"):
        adapt_patch_embedding(model, 6)


# ---- --train_only_new ------------------------------------------------------------------------------------------
def test_train_only_new_trains_the_new_task_and_keeps_the_old_ones_bit_identical(tiny_config, randomize_batchnorm,
                                                                                   tmp_path):
    from s5_hf.data.synthetic import make_fake_potsdam

    make_fake_potsdam(tmp_path / "potsdam")
    torch.manual_seed(0)
    start = randomize_batchnorm(S5ForSemanticSegmentation(
        tiny_config(tasks=["vaihingen", "isaid"], part_features=8, drop_path_rate=0.0))).eval()
    start.save_pretrained(tmp_path / "start")
    args = ["--model_name_or_path", str(tmp_path / "start"), "--train_datasets", f"potsdam={tmp_path / 'potsdam'}",
            "--train_only_new", "--reader_options", json.dumps({"potsdam": {"patch_size": 64, "stride": 64}}),
            "--output_dir", str(tmp_path / "run"), "--crop_size", "64", "--batch_size", "2",
            "--learning_rate", "5e-3", "--loss_start", "--max_train_steps", "3", "--eval_steps", "0",
            "--validation_splits", "potsdam=", "--test_splits", "potsdam=", "--logging_steps", "1"]
    built = finetune.build_model(finetune.parse_args(args))
    trainable = {n for n, p in built.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoders.2.", "classifiers.2.")) or ".mlp.experts.2." in n
                             for n in trainable)
    assert any(".mlp.experts.2." in n for n in trainable) and any(n.startswith("classifiers.2.") for n in trainable)
    finetune.main(args)
    trained = S5ForSemanticSegmentation.from_pretrained(tmp_path / "run" / "model").eval()
    assert trained.config.task_names == ["vaihingen", "isaid", "potsdam"]
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for name in ("vaihingen", "isaid"):
            assert torch.equal(trained(pixels, task=name).logits, start(pixels, task=name).logits), name
    # Every old tensor, BatchNorm running statistics included, is unchanged; the new task did train.
    before, after = start.state_dict(), trained.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    copied = before["decoders.0.fpn_bottleneck.0.weight"]  # the new decoder starts as a copy of the first task's
    assert not torch.equal(after["decoders.2.fpn_bottleneck.0.weight"], copied)
    assert not torch.equal(after["s5.encoder.layer.0.mlp.experts.2.weight"],
                           before["s5.encoder.layer.0.mlp.experts.0.weight"])


def test_train_only_new_refuses_an_old_task(mdf_model, tmp_path):
    mdf_model().save_pretrained(tmp_path / "start")
    args = finetune.parse_args(["--model_name_or_path", str(tmp_path / "start"), "--train_datasets",
                                f"potsdam={tmp_path}", "--train_only_new", "--output_dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match=r"\['potsdam'\] are already tasks"):
        finetune.build_model(args)
    with pytest.raises(ValueError, match="needs --model_name_or_path"):
        finetune.parse_args(["--train_datasets", f"potsdam={tmp_path}", "--train_only_new",
                             "--output_dir", str(tmp_path / "run")])
