"""Test-wide settings (nothing may reach the network; uploads to the loopback Hub must not use Xet) and the fixtures
that several test files share, so that no test file imports another:

- `hub`: a loopback Hub stand-in (tests/hub_server.py) of its own for each test, with the client libraries pointed
  at it. pytest puts this folder on sys.path (rootdir-relative "prepend" import of conftest.py), so test files
  import the server as `from hub_server import LocalHub`.
- `one_thread`: one intra-op thread for the test.
- tiny models: `tiny_config`, `tiny_model`, `randomize_batchnorm`, `random_pixels`.
- RS4P (the tests/test_rs4p_*.py files): `rs4p_model`, `encode_image`, `random_image`, `make_pool_folder`,
  `rs4p_workspace`, `selection_arguments`, `read_selection`, `rs4p_reference_run`.
"""

import functools
import io
import logging
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# datasets sleeps SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s) each time a Parquet stream ends, to let PyArrow's reader
# threads wind down; the tests' tiny streams end every few batches. A short pause keeps that courtesy.
import datasets  # noqa: E402

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.2

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # `import hub_server` also under --import-mode=importlib
    sys.path.insert(0, _TESTS)

from hub_server import LocalHub  # noqa: E402


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running LocalHub with huggingface_hub, transformers and datasets pointed at it (and a fresh HF_HOME)."""
    with LocalHub(tmp_path / "hub") as server:
        server.patch_env(monkeypatch, tmp_path / "hf_home")
        yield server
        # Nothing may have tried another host, nor a route the stand-in lacks.
        assert server.blocked == []
        assert server.unhandled == []


@pytest.fixture
def transformers_records():
    """Everything transformers logs at warning level or above while the test runs (its logger does not propagate)."""
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: the detection tests' many small convolutions and polygon ops run much
    faster without thread spin-waits on a 2-core machine (about 20x under contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Tiny models. Factories (session-scoped, so module- and session-scoped fixtures can use them too); each test keeps
# its own seed and overrides.
# ----------------------------------------------------------------------------------------------------------------
# The tests' tiny ViT: 4 blocks of width 32 with 2 heads on 64 px images (16 px patches), a UperNet of width 16.
# `part_features` is not set here: multi-task tests set it (experts need 0 < part_features < 32), single-task ones
# mostly keep the default (no experts with one task).
_TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
         "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16}


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides) -> S5Config`: the tiny ViT above with any field (tasks, part_features, image_size...)
    overridden."""
    from s5_hf import S5Config

    def make(**overrides):
        return S5Config(**{**_TINY, **overrides})

    return make


# The tiny oriented detector: the ViT above with experts for two datasets and small FPN/RPN/RoI heads.
_TINY_DETECTION = {**{k: v for k, v in _TINY.items() if k != "decoder_hidden_size"}, "part_features": 8,
                   "fpn_channels": 16, "roi_fc_dim": 32, "anchor_scales": [4], "rpn_pre_nms": 200,
                   "rpn_max_proposals": 60, "roi_num_samples": 32, "rpn_num_samples": 64, "drop_path_rate": 0.0,
                   "tasks": [{"name": "dior", "id2label": {0: "airplane", 1: "ship"}},
                             {"name": "dota", "id2label": {0: "plane"}}]}


@pytest.fixture(scope="session")
def tiny_detection_config():
    """`tiny_detection_config(**overrides) -> S5DetectionConfig`: the tiny detector above, fields overridden."""
    from s5_hf.configuration_s5_detection import S5DetectionConfig

    def make(**overrides):
        return S5DetectionConfig(**{**_TINY_DETECTION, **overrides})

    return make


def _randomize_batchnorm(model, seed: int = 1, mean_scale: float = 0.1):
    """Seeded random BatchNorm running statistics: fresh BatchNorm in eval mode is the identity, which would let
    comparisons pass that should not (as after training, copies and eval mode then matter). Returns the model."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * mean_scale)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


@pytest.fixture(scope="session")
def randomize_batchnorm():
    """`randomize_batchnorm(model, seed=1, mean_scale=0.1) -> model`: seeded random BatchNorm statistics, in place."""
    return _randomize_batchnorm


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """`tiny_model(tasks=MDF_TASKS, seed=0, **overrides)`: an eval-mode tiny S5ForSemanticSegmentation with experts
    (part_features=8 unless overridden), weights from `torch.manual_seed(seed)` and random BatchNorm statistics."""
    import torch

    from s5_hf import S5ForSemanticSegmentation
    from s5_hf.label_sets import MDF_TASKS

    def make(tasks=MDF_TASKS, seed=0, **overrides):
        torch.manual_seed(seed)
        config = tiny_config(**{"part_features": 8, "tasks": list(tasks), **overrides})
        return _randomize_batchnorm(S5ForSemanticSegmentation(config).eval())

    return make


@pytest.fixture(scope="session")
def random_pixels():
    """`random_pixels(batch=2, size=64, seed=0)`: standard-normal pixel values of shape (batch, 3, size, size)."""
    import torch

    def make(batch=2, size=64, seed=0):
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))

    return make


# ----------------------------------------------------------------------------------------------------------------
# RS4P (tests/test_rs4p_*.py): a tiny scoring model, a fake unlabeled pool with broken and unusable images, a
# labeled set as Parquet shards, and one reference selection run that the other runs are compared with.
# ----------------------------------------------------------------------------------------------------------------
_RS4P_IMAGE_SIZE = 64
_RS4P_SOURCES = ("millionaid", "samrs", "star")
# Pool images that decode but are not 8-bit RGB, or are constant, and the start of the reason each gets.
_RS4P_UNUSABLE = {
    "star/star_16bit.png": "unsupported pixel format: 16-bit I;16 image",
    "star/star_16bit_rgb.png": "unsupported pixel format: 16-bit RGB image",
    "star/star_16bit.tif": "unsupported pixel format: 16-bit I;16 image",
    "star/star_float.tif": "unsupported pixel format: 32-bit F image",
    "star/star_4band.tif": "unsupported pixel format: mode 'RGB' with 4 band(s)",
    "millionaid/millionaid_constant.png": "constant image",
}


def _rs4p_model(seed: int = 0):
    import torch

    from s5_hf import S5Config, S5ForSemanticSegmentation

    torch.manual_seed(seed)
    config = S5Config(**{**_TINY, "image_size": _RS4P_IMAGE_SIZE, "patch_size": 16, "tasks": ["isaid"]})
    model = S5ForSemanticSegmentation(config).eval()
    # Random BatchNorm statistics and a sharper classifier so predictions (and entropies) differ across images.
    _randomize_batchnorm(model, seed=seed + 1, mean_scale=0.2)
    with torch.no_grad():
        for classifier in model.classifiers:
            classifier[-1].weight.mul_(100.0)
    return model


def _random_image(rng, size: int = _RS4P_IMAGE_SIZE):
    import numpy as np

    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _encode_image(array, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_16bit_rgb(array) -> bytes:
    """A 48-bit RGB PNG (Pillow opens these as 8-bit "RGB" and cannot write them)."""
    height, width, _ = array.shape
    raw = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _four_band_tiff(rng) -> bytes:
    """An RGB + near-infrared TIFF (Pillow opens it as "RGB", dropping the fourth band)."""
    from PIL import Image

    size = _RS4P_IMAGE_SIZE
    buffer = io.BytesIO()
    Image.frombytes("RGBX", (size, size), rng.bytes(size * size * 4)).save(buffer, "TIFF")
    return buffer.getvalue()


def _write_unusable_images(root: Path, rng) -> None:
    import numpy as np

    size = _RS4P_IMAGE_SIZE
    # Sensor-like ranges: read as 8 bits, 12-bit data is nearly black and float reflectances all black, and dark
    # images have the lowest entropy, so they would be selected first.
    twelve_bit = rng.integers(0, 4096, (size, size)).astype(np.uint16)
    (root / "star" / "star_16bit.png").write_bytes(_encode_image(twelve_bit))
    (root / "star" / "star_16bit_rgb.png").write_bytes(_png_16bit_rgb(np.stack([twelve_bit] * 3, axis=-1)))
    (root / "star" / "star_16bit.tif").write_bytes(_encode_image(twelve_bit, "TIFF"))
    (root / "star" / "star_float.tif").write_bytes(_encode_image(rng.random((size, size), np.float32), "TIFF"))
    (root / "star" / "star_4band.tif").write_bytes(_four_band_tiff(rng))
    (root / "millionaid" / "millionaid_constant.png").write_bytes(_encode_image(np.full((size, size, 3), 90,
                                                                                        np.uint8)))


def _make_pool_folder(root: Path, num_images: int = 190, corrupt: bool = True) -> Path:
    import numpy as np

    from s5_hf.data.synthetic import make_fake_unlabeled_pool

    make_fake_unlabeled_pool(root, num_images=num_images, size=_RS4P_IMAGE_SIZE, sources=_RS4P_SOURCES, seed=0)
    rng = np.random.default_rng(0)
    (root / "millionaid" / "millionaid_small.jpg").write_bytes(_encode_image(_random_image(rng, 48), "JPEG"))
    (root / "star" / "star_large.png").write_bytes(_encode_image(_random_image(rng, 80)))
    (root / "star" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "samrs" / "broken.png").write_bytes(b"definitely not a png")
        (root / "samrs" / "truncated.jpg").write_bytes(_encode_image(_random_image(rng), "JPEG")[:300])
        _write_unusable_images(root, rng)
    return root


def _make_labeled(root: Path, num_scenes: int = 30) -> Path:
    """The fake iSAID (scenes of 32-96 px) read by its reader and written as Parquet shards, as a real labeled set
    would be prepared."""
    from s5_hf.data import load_benchmark, to_parquet_shards
    from s5_hf.data.synthetic import make_fake_isaid

    make_fake_isaid(root / "raw", num_images=(num_scenes, 1), size=_RS4P_IMAGE_SIZE)
    dataset = load_benchmark("isaid", root / "raw", "train", patch_size=None, cache_dir=str(root / "cache"))
    to_parquet_shards(dataset, root / "parquet", shard_size_mb=1)
    return root / "parquet"


@pytest.fixture(scope="session")
def rs4p_model():
    """`rs4p_model(seed=0)`: the tiny single-task (iSAID) scoring model, eval mode, with random BatchNorm statistics
    and a sharpened classifier so that predictions and entropies differ across images."""
    return _rs4p_model


@pytest.fixture(scope="session")
def random_image():
    """`random_image(rng, size=64)`: a uniform random 8-bit RGB array of shape (size, size, 3)."""
    return _random_image


@pytest.fixture(scope="session")
def encode_image():
    """`encode_image(array, fmt="PNG") -> bytes`: the array saved by Pillow in that format."""
    return _encode_image


@pytest.fixture(scope="session")
def make_pool_folder():
    """`make_pool_folder(root, num_images=190, corrupt=True) -> root`: the shared fake pool
    (`<root>/<source>/<source>_<n>.<ext>`) plus two off-size images (resize path), a non-image file and, with
    `corrupt`, a garbage "PNG" and a truncated JPEG in 'samrs' and the unusable images listed in
    `rs4p_workspace["unusable"]` (200 images in all by default)."""
    return _make_pool_folder


@pytest.fixture(scope="session")
def rs4p_workspace(tmp_path_factory):
    """One saved scoring model, pool folder and labeled Parquet set for all RS4P tests, with the facts the tests
    check against: image size, pool sources and the unusable images with the start of their failure reason."""
    root = tmp_path_factory.mktemp("rs4p")
    model_dir = root / "model"
    _rs4p_model().save_pretrained(model_dir)
    return {
        "root": root,
        "model": model_dir,
        "pool": _make_pool_folder(root / "pool"),
        "labeled": _make_labeled(root / "labeled"),
        "image_size": _RS4P_IMAGE_SIZE,
        "sources": _RS4P_SOURCES,
        "unusable": dict(_RS4P_UNUSABLE),
    }


def _selection_arguments(workspace, output_dir: Path, **overrides):
    from s5_hf.rs4p import SelectionArguments

    values = dict(pool=[str(workspace["pool"])], labeled=str(workspace["labeled"]), model=str(workspace["model"]),
                  output_dir=str(output_dir), target_size=60, num_clusters=4, batch_size=8,
                  image_size=_RS4P_IMAGE_SIZE, chunk_size=25)
    return SelectionArguments(**{**values, **overrides})


@pytest.fixture(scope="session")
def selection_arguments(rs4p_workspace):
    """`selection_arguments(output_dir, **overrides)`: the SelectionArguments of the reference run (the workspace's
    pool, labeled set and model; 60 images, 4 clusters, chunks of 25) into `output_dir`, any field overridden."""
    return functools.partial(_selection_arguments, rs4p_workspace)


@pytest.fixture(scope="session")
def read_selection():
    """`read_selection(output_dir) -> (selection rows in rank order, dataset rows in file order)`, every column."""
    import pyarrow.parquet as pq

    def read(output_dir: Path):
        selection = pq.read_table(output_dir / "selection.parquet").to_pylist()
        files = sorted((output_dir / "dataset" / "data").glob("*.parquet"))
        rows = [row for f in files for row in pq.read_table(f).to_pylist()]
        return selection, rows

    return read


@pytest.fixture(scope="session")
def rs4p_reference_run(rs4p_workspace):
    """One uninterrupted single-process run that the other runs are compared with: (output_dir, outcome)."""
    from s5_hf.rs4p import run_selection

    output_dir = rs4p_workspace["root"] / "reference"
    outcome = run_selection(_selection_arguments(rs4p_workspace, output_dir))
    return output_dir, outcome


# ----------------------------------------------------------------------------------------------------------------
# Skips: every skip says why, and in CI (CI=true) none is allowed, so a missing browser, extra or data file fails
# the run instead of shrinking it in silence. `pytest -m "not slow"` deselects; it does not skip.
# ----------------------------------------------------------------------------------------------------------------
_SKIPS: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")
        _SKIPS.append((report.nodeid, reason.removeprefix("Skipped: ").strip()))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _refused_skips() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason in _SKIPS if _in_ci() or not reason]


def pytest_sessionfinish(session, exitstatus):
    if _refused_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    refused = _refused_skips()
    if refused:
        what = "skipped in CI (CI=true), where no test may skip" if _in_ci() else "skipped without a reason"
        terminalreporter.section("refused skips", red=True)
        terminalreporter.write_line(f"{len(refused)} test(s) {what}; the run fails:")
        for nodeid, reason in refused:
            terminalreporter.write_line(f"  {nodeid}: {reason or '(no reason given)'}")
