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

from s5_hf import S5ForSemanticSegmentation, S5ImageProcessor
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
def model_dir(tiny_config, tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config(part_features=8, tasks=["openearthmap", "loveda"], initializer_range=0.2)
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
    names = model.config.get_task("loveda").id2label
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
    # s5-hf is on no package index: the Space carries a copy of s5_hf (demo/build_space.py), not a requirement.
    lines = [line.strip() for line in (DEMO / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert not any(r.lower().startswith(("s5-hf", "s5_hf")) for r in requirements)
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("gradio==") for r in requirements)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(app, model_dir):
    """The app launched once on loopback, offering the test model as the operator's local folder."""
    pytest.importorskip("gradio")
    demo = app.build_demo(local_model=model_dir)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, ssr_mode=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_app_serves_its_page_without_server_paths(served, model_dir):
    page = urllib.request.urlopen(served, timeout=30).read().decode()
    config = urllib.request.urlopen(served + "config", timeout=30).read().decode()
    assert "S5 remote-sensing segmentation" in page
    assert '"loveda"' in config and '"openearthmap"' in config  # the dropdown lists the model's heads
    assert '"s5/s5-vit-b-mdf"' in config and '"local model"' in config
    assert str(model_dir) not in config and str(Path(model_dir).resolve()) not in config


def test_api_refuses_models_that_are_not_offered(served, model_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    sample = str(Path(__file__).resolve().parents[1] / "s5_hf" / "sample_data" / "SOAP_031.png")
    for choice in ("/etc", str(model_dir), "someone/any-model"):
        with pytest.raises(AppError) as error:
            client.predict(choice, api_name="/on_load")
        if choice != str(model_dir):  # (Gradio's own check repeats the value the visitor sent)
            assert str(model_dir) not in str(error.value)
    from gradio_client import handle_file

    with pytest.raises(AppError):
        client.predict(handle_file(sample), "loveda", "/etc", 0.5, api_name="/on_predict")


@pytest.fixture()
def handlers(app, model_dir, monkeypatch):
    """The app's event handlers, with every model load recorded (a refused choice must load nothing)."""
    pytest.importorskip("gradio")
    loaded = []
    real = app.load_model

    def recording_load(model_id, *args, **kwargs):
        loaded.append(model_id)
        return real(model_id, *args, **kwargs)

    monkeypatch.setattr(app, "load_model", recording_load)
    app.load.cache_clear()
    built = {f.name: f.fn for f in app.build_demo(local_model=model_dir).fns.values()}
    built["loaded"] = loaded
    yield built
    app.load.cache_clear()


def test_app_reloads_heads_and_refuses_other_models(app, handlers, model_dir, tmp_path):
    import gradio as gr

    dropdown = handlers["on_load"](app.LOCAL_CHOICE)
    assert dropdown.value == "openearthmap" and [c[0] for c in dropdown.choices] == ["openearthmap", "loveda"]
    loads = list(handlers["loaded"])
    for choice in (str(tmp_path / "no-such-model"), model_dir, "/etc", "evil/model", "s5/s5-vit-b-mdf/../x"):
        with pytest.raises(gr.Error, match="only its listed models") as error:
            handlers["on_load"](choice)
        assert choice not in str(error.value) and str(tmp_path) not in str(error.value)
        with pytest.raises(gr.Error, match="only its listed models"):
            handlers["on_predict"](scene(), "loveda", choice, 0.5)
    assert handlers["loaded"] == loads  # nothing was downloaded or read for a refused choice


def test_errors_shown_to_visitors_hold_no_server_paths(app, handlers, model_dir, monkeypatch):
    import gradio as gr

    def failing_load(model_id, *args, **kwargs):
        raise OSError(f"/srv/hf-cache/models--s5/{model_id}/config.json: not found")

    monkeypatch.setattr(app, "load_model", failing_load)
    app.load.cache_clear()
    with pytest.raises(gr.Error) as error:
        handlers["on_load"]("s5/s5-vit-b-mdf")
    assert "Cannot load s5/s5-vit-b-mdf" in str(error.value) and "/srv" not in str(error.value)
    models = {app.LOCAL_CHOICE: model_dir}
    text = app.visitor_message(ValueError(f"{model_dir}/config.json: bad value, see /var/log/s5/x.log"), models)
    assert model_dir not in text and "/var/log" not in text and "local model/config.json: bad value" in text
    assert app.visitor_message(ValueError("scale by 1/255 or 1/65535"), models) == "scale by 1/255 or 1/65535"
    assert "/srv" not in app.visitor_message(OSError("/srv/x/y: denied"), models)


def test_operator_settings(app, model_dir, monkeypatch):
    monkeypatch.delenv("S5_LOCAL_MODEL", raising=False)
    monkeypatch.delenv("S5_MODEL_ID", raising=False)
    models, default = app.operator_settings()
    assert list(models) == list(app.PUBLISHED_MODELS) and default == "s5/s5-vit-b-mdf"
    models, default = app.operator_settings(local_model=model_dir)
    assert default == app.LOCAL_CHOICE and models[app.LOCAL_CHOICE] == str(Path(model_dir).resolve())
    monkeypatch.setenv("S5_MODEL_ID", model_dir)  # the earlier way to serve a folder keeps working
    assert app.operator_settings()[1] == app.LOCAL_CHOICE
    monkeypatch.setenv("S5_MODEL_ID", "someone/else")
    with pytest.raises(ValueError, match="not offered"):
        app.operator_settings()


# ------------------------------------------------------------------------------------------------------------
# The page in a real browser: Debian's chromium + chromium-driver, driven by Selenium
# ------------------------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  # The network is closed here: background requests (updates, sync) would make the browser hang.
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1400,1800"]


def browser_or_skip(tmp_path):
    """A headless Chromium WebDriver; where none can be installed the test is skipped, except in CI (CI=true),
    where a missing browser fails."""
    missing = []
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package (extra `test`)")
    import shutil

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        missing.append("chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    if missing:
        message = "no headless browser: needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.page_load_strategy = "eager"  # do not wait for web fonts the closed network never delivers
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    return driver


def test_visitor_segments_a_sample_scene_in_a_browser(app, served, model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from s5_hf import sample_data

    sample = sample_data.path("SOAP_031.png")
    with Image.open(sample) as image:
        expected_image, expected_table = app.predict(image.convert("RGB"), "openearthmap", model_dir, alpha=0.5)
    # Rows "| id | colour swatch `#hex` | class | share |" of the classes present.
    expected_rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in expected_table.splitlines()[2:]]
    expected_names = [row[2] for row in expected_rows]

    driver = browser_or_skip(tmp_path)
    try:
        driver.get(served)
        wait = WebDriverWait(driver, 40)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))[0]
        upload.send_keys(str(sample))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # the upload is shown
        driver.find_element(By.CSS_SELECTOR, "#segment").click()

        def loaded_prediction(d):
            for element in d.find_elements(By.CSS_SELECTOR, "#prediction img"):
                if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element):
                    return element
            return None

        shown = wait.until(loaded_prediction)
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", shown)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#shares table td"))
        cells = [[c.text.strip() for c in row.find_elements(By.CSS_SELECTOR, "td")]
                 for row in driver.find_elements(By.CSS_SELECTOR, "#shares table tbody tr")]
    finally:
        driver.quit()
    # The mask over the 400 x 400 scene plus the legend panel, as the app draws it in-process.
    assert tuple(size) == expected_image.size and expected_image.width > 400
    # The legend table lists the head's classes present in the prediction, with their shares.
    assert [row[2] for row in cells] == expected_names and expected_names
    assert [row[0] for row in cells] == [row[0] for row in expected_rows]
    assert [row[3] for row in cells] == [row[3] for row in expected_rows]  # shares, e.g. "42.1 %"
    assert [row[1].split()[-1] for row in cells] == [row[1].split()[-1].strip("`") for row in expected_rows]
    names = app.load(model_dir)[0].config.get_task("openearthmap").id2label.values()
    assert set(expected_names) <= {name.replace("_", " ") for name in names}
