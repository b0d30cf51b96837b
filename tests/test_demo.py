"""The Gradio Space in demo/: prediction logic headless, and the app served once on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from s5_hf import S5Config, S5ForSemanticSegmentation, S5ImageProcessor
from s5_hf.inference import segment_scene

DEMO = Path(__file__).resolve().parents[1] / "demo"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("s5_demo_app", DEMO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, part_features=8,
                      tasks=["openearthmap", "loveda"], initializer_range=0.2)
    path = tmp_path_factory.mktemp("demo_model")
    S5ForSemanticSegmentation(config).save_pretrained(path)
    S5ImageProcessor().save_pretrained(path)
    return str(path)


def scene(height: int = 72, width: int = 96) -> Image.Image:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse.repeat(8, 0).repeat(8, 1))


def test_predict_draws_the_mask_with_a_legend(app, model_dir):
    image = scene()
    shown, table = app.predict(image, "loveda", model_dir, alpha=1.0)
    model, processor = app.load(model_dir)
    labels = segment_scene(model, image, "loveda", processor=processor, window=96)
    assert shown.height >= image.height and shown.width > image.width  # legend to the right
    # With opacity 1 the left part is exactly the colour mask of the prediction.
    from s5_hf.visualize import colorize, task_palette

    expected = np.asarray(colorize(labels, task_palette(model.config.get_task("loveda"))))
    np.testing.assert_array_equal(np.asarray(shown)[: image.height, : image.width], expected)
    present = np.unique(labels)
    names = model.config.get_task("loveda")["id2label"]
    assert len(table.splitlines()) == 2 + len(present)
    for k in present:
        assert names[int(k)] in table
    shares = [float(line.rsplit("|", 2)[1].strip(" %")) for line in table.splitlines()[2:]]
    assert sum(shares) == pytest.approx(100, abs=0.5)


def test_predict_accepts_arrays_and_rejects_unknown_tasks(app, model_dir):
    shown, _ = app.predict(np.asarray(scene(40, 40)), "openearthmap", model_dir)
    assert shown.width > 40
    with pytest.raises(ValueError, match="openearthmap, loveda"):
        app.predict(scene(), "potsdam", model_dir)
    with pytest.raises(ValueError, match="Upload an image"):
        app.predict(None, "loveda", model_dir)
    assert app.task_names(model_dir) == ["openearthmap", "loveda"]


def test_space_metadata():
    readme = (DEMO / "README.md").read_text()
    meta = yaml.safe_load(readme.split("---\n", 2)[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (DEMO / meta["app_file"]).is_file()
    requirements = (DEMO / "requirements.txt").read_text().split()
    assert "s5-hf" in requirements and any(r.startswith("gradio") for r in requirements)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_app_serves_its_page(app, model_dir):
    pytest.importorskip("gradio")
    demo = app.build_demo(model_dir)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, ssr_mode=False)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read().decode()
    finally:
        demo.close()
    assert "S5 remote-sensing segmentation" in page
    assert '"loveda"' in config and '"openearthmap"' in config  # the dropdown lists the model's heads


def test_app_reloads_heads_and_reports_bad_models(app, model_dir, tmp_path):
    gr = pytest.importorskip("gradio")
    handlers = {f.name: f.fn for f in app.build_demo(model_dir).fns.values()}
    dropdown = handlers["on_load"](model_dir)
    assert dropdown.value == "openearthmap" and [c[0] for c in dropdown.choices] == ["openearthmap", "loveda"]
    with pytest.raises(gr.Error, match="Cannot load"):
        handlers["on_load"](str(tmp_path / "no-such-model"))
