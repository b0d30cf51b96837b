"""save_pretrained / from_pretrained, Auto classes, remote code in a process without s5_hf, pipelines."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoBackbone,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    pipeline,
)

from s5_hf import S5Backbone, S5ForSemanticSegmentation, S5ImageProcessor, S5Model


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("s5") / "model"
    model = tiny_model()
    model.save_pretrained(path)
    S5ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path, model


def test_roundtrip_gives_identical_outputs(saved, random_pixels):
    path, model = saved
    loaded = S5ForSemanticSegmentation.from_pretrained(path).eval()
    pixel_values = random_pixels(3)
    tasks = ["potsdam", "loveda", "potsdam"]
    with torch.no_grad():
        # Same weights; kernels may differ in the last bits with the loaded tensors' memory layout.
        torch.testing.assert_close(model(pixel_values, task=tasks).logits, loaded(pixel_values, task=tasks).logits,
                                   atol=1e-6, rtol=0)
    assert loaded.config.tasks == model.config.tasks
    reloaded = loaded.state_dict()
    assert reloaded.keys() == model.state_dict().keys()
    assert all(torch.equal(value, reloaded[key]) for key, value in model.state_dict().items())  # bit-exact weights


def test_only_safetensors_and_the_code_are_written(saved):
    path, _ = saved
    files = {p.name for p in path.iterdir()}
    assert "model.safetensors" in files
    assert not {f for f in files if f.endswith((".bin", ".pth", ".pt"))}
    assert {"configuration_s5.py", "modeling_s5.py", "image_processing_s5.py", "label_sets.py"} <= files


def test_auto_classes_load_the_folder(saved):
    path, _ = saved
    assert isinstance(AutoModelForSemanticSegmentation.from_pretrained(path), S5ForSemanticSegmentation)
    assert isinstance(AutoModel.from_pretrained(path), S5Model)
    assert isinstance(S5Backbone.from_pretrained(path), S5Backbone)
    assert isinstance(AutoBackbone.from_config(S5Backbone.config_class.from_pretrained(path)), S5Backbone)
    assert isinstance(AutoImageProcessor.from_pretrained(path), S5ImageProcessor)


def test_autobackbone_from_pretrained_on_a_folder_is_still_unsupported_upstream(saved):
    # The README documents S5Backbone.from_pretrained for folders because transformers' AutoBackbone.from_pretrained
    # asks the Hub whether the name is a repository first. When this starts to pass, update the README.
    path, _ = saved
    with pytest.raises(Exception, match="[Rr]epo id"):
        AutoBackbone.from_pretrained(str(path))


def test_saved_auto_map_covers_every_auto_class(saved):
    path, _ = saved
    auto_map = json.loads((path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_s5.S5Config",
        "AutoModel": "modeling_s5.S5Model",
        "AutoBackbone": "modeling_s5.S5Backbone",
        "AutoModelForSemanticSegmentation": "modeling_s5.S5ForSemanticSegmentation",
    }


def test_backbone_weights_load_into_the_base_model(saved, random_pixels):
    path, model = saved
    base = S5Model.from_pretrained(path).eval()
    with torch.no_grad():
        ours = base(random_pixels(1), task="loveda").feature_maps[0]
        theirs = model.s5(random_pixels(1), task="loveda").feature_maps[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_mismatched_checkpoint_is_reported(saved, tiny_model, tmp_path):
    path, _ = saved
    other = tiny_model(tasks=["isaid"], hidden_size=64, part_features=16)
    other.save_pretrained(tmp_path / "other")
    # Loading weights of another width into this architecture must fail loudly, not load half the weights.
    with pytest.raises(ValueError, match=r"'hidden_size': \(64, 32\)"):
        S5ForSemanticSegmentation.from_pretrained(tmp_path / "other", config=S5ForSemanticSegmentation.from_pretrained(path).config)


@pytest.mark.parametrize("loader", ["class", "auto"])
def test_same_shapes_but_another_function_is_refused(saved, loader):
    # num_attention_heads and layer_norm_eps leave every tensor shape unchanged: the weights would load silently.
    path, _ = saved
    load = {"class": S5ForSemanticSegmentation, "auto": AutoModelForSemanticSegmentation}[loader].from_pretrained
    with pytest.raises(ValueError, match=r"'num_attention_heads': \(2, 4\)"):
        load(path, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"'layer_norm_eps': \(1e-05, 1e-06\)"):
        load(path, layer_norm_eps=1e-6)
    config = S5ForSemanticSegmentation.config_class.from_pretrained(path)
    config.layer_norm_eps = 1e-3
    with pytest.raises(ValueError, match="layer_norm_eps"):
        load(path, config=config)
    # Settings that leave the function alone still load.
    model = load(path, drop_path_rate=0.0, classifier_dropout=0.0)
    assert model.config.drop_path_rate == 0.0


def test_remote_code_loads_in_a_process_without_s5_hf(saved, random_pixels, tmp_path):
    path, model = saved
    pixel_values = random_pixels(2)
    with torch.no_grad():
        expected = model(pixel_values, task="openearthmap").logits
    save_file({"pixel_values": pixel_values, "expected": expected}, tmp_path / "io.safetensors")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["s5_hf"] = None  # any import of the installed package now fails
        import torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
        assert "s5_hf" not in type(model).__module__, type(model).__module__
        processor = AutoImageProcessor.from_pretrained({str(path)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "S5ImageProcessor"
        from transformers import AutoModel
        base = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
        assert type(base).__name__ == "S5Model" and "s5_hf" not in type(base).__module__, type(base).__module__
        io = load_file({str(tmp_path / "io.safetensors")!r})
        with torch.no_grad():
            logits = model(io["pixel_values"], task="openearthmap").logits
        print("MAXDIFF", (logits - io["expected"]).abs().max().item())
        import numpy as np
        from PIL import Image
        from transformers import pipeline
        segmenter = pipeline("image-segmentation", model={str(path)!r}, trust_remote_code=True)
        assert segmenter(Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("MAXDIFF")[1]) <= 1e-6
    assert "not supported" not in result.stderr, result.stderr[-3000:]  # the pipeline knows the remote-code class


def test_image_segmentation_pipeline(saved):
    path, _ = saved
    model = S5ForSemanticSegmentation.from_pretrained(path).eval()
    model.set_default_task("loveda")
    processor = S5ImageProcessor.from_pretrained(path)
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    segments = segmenter(image)
    classes = set(model.config.get_task("loveda").id2label.values())
    assert segments and {s["label"] for s in segments} <= classes
    masks = np.stack([np.array(s["mask"]) for s in segments])
    assert masks.shape[1:] == (50, 70)
    assert (masks.sum(0) == 255).all()  # every pixel belongs to exactly one class


def test_image_segmentation_pipeline_from_the_folder(saved, transformers_records, capsys, monkeypatch):
    # The pipeline resolves model and image processor through the Auto classes (locally registered s5_hf classes),
    # without logging that the model is unsupported and without asking about remote code (a video processor).
    path, model = saved
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail(f"prompted: {args}"))
    segmenter = pipeline("image-segmentation", model=str(path))
    assert isinstance(segmenter.model, S5ForSemanticSegmentation)
    assert isinstance(segmenter.image_processor, S5ImageProcessor)
    segments = segmenter(Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)))
    default = model.config.get_task(model.config.default_task)
    assert segments and {s["label"] for s in segments} <= set(default.id2label.values())
    assert np.stack([np.array(s["mask"]) for s in segments]).sum(0).tolist() == np.full((40, 48), 255).tolist()
    assert [r.getMessage() for r in transformers_records] == []
    assert "custom code" not in capsys.readouterr().out


def test_image_segmentation_pipeline_with_a_model_object_is_quiet(saved, transformers_records):
    path, _ = saved
    model = S5ForSemanticSegmentation.from_pretrained(path).eval()
    processor = S5ImageProcessor(size={"height": 64, "width": 64})
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    segments = segmenter(Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 40, 3), dtype=np.uint8)))
    assert segments and np.stack([np.array(s["mask"]) for s in segments]).shape[1:] == (32, 40)
    assert [r.getMessage() for r in transformers_records] == []
