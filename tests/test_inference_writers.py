"""`s5-segment` outputs and inputs beyond local files: Cloud-Optimized GeoTIFF masks (`--cog`) and remote scenes read
by window through GDAL's /vsicurl/ from a loopback HTTP server with Range support."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.image_processing_s5 import S5ImageProcessor
from s5_hf.label_sets import VOID_ID

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

from s5_hf.inference import writers  # noqa: E402
from s5_hf.inference.cli import main  # noqa: E402
from s5_hf.inference.scenes import ArrayScene, open_scene  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 32,
        "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16}
TRANSFORM = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 3300000.0)


@pytest.fixture
def model_folder(tmp_path, one_thread):
    torch.manual_seed(0)
    S5ForSemanticSegmentation(S5Config(**TINY, tasks=["potsdam"])).save_pretrained(tmp_path / "model")
    S5ImageProcessor().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def write_scene(path: Path, height: int, width: int, nodata_rows: int = 0) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (3, height, width), dtype=np.uint8)
    pixels[:, :nodata_rows] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=TRANSFORM, nodata=0 if nodata_rows else None, tiled=True,
                       blockxsize=64, blockysize=64) as dst:
        dst.write(pixels)
    return path


class FakeScene(ArrayScene):
    """An in-memory scene with georeferencing, for writer tests without a model."""

    def __init__(self, height, width):
        super().__init__(np.zeros((height, width, 1), np.uint8), "fake")
        self.crs, self.transform = rasterio.crs.CRS.from_epsg(32617), TRANSFORM


def blocky_labels(height: int, width: int) -> np.ndarray:
    # 4 x 4 blocks of one class with one odd pixel each: a majority-class overview keeps the block's class.
    labels = ((np.arange(height)[:, None] // 4 + np.arange(width)[None] // 4) % 5).astype(np.uint8)
    labels[::4, ::4] = 4
    labels[:8, :] = VOID_ID
    return labels


@pytest.mark.parametrize("driver", ["COG", "GTiff-fallback"])
def test_cog_writer_layout(tmp_path, monkeypatch, driver):
    if driver == "COG" and not writers.has_cog_driver():
        pytest.skip("GDAL without the COG driver")
    if driver != "COG":
        monkeypatch.setattr(writers, "has_cog_driver", lambda: False)
    height, width = 1100, 600
    palette = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0]], np.uint8)
    writer = writers._label_writer(tmp_path / "mask.tif", FakeScene(height, width), palette, list("abcde"), cog=True)
    labels = blocky_labels(height, width)
    for top in range(0, height, 300):
        writer.write(labels[top : top + 300])
    assert not (tmp_path / "mask.tif").exists()  # only complete files appear under the final name
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]  # no intermediate left behind
    with rasterio.open(tmp_path / "mask.tif") as src:
        assert src.profile["tiled"] and src.block_shapes == [(512, 512)]
        assert src.overviews(1) == [2, 4]  # until the smallest fits in one 512 px block
        assert src.crs.to_epsg() == 32617 and src.transform == TRANSFORM
        assert src.nodata == VOID_ID and src.colormap(1)[1] == (0, 0, 255, 255)
        assert json.loads(src.tags(1)["class_names"]) == list("abcde")
        np.testing.assert_array_equal(src.read(1), labels)
        overview = src.read(1, out_shape=(height // 2, width // 2))
        if driver == "COG":
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    # Majority of each 2 x 2 block: not an average of class ids, never a class that is not there.
    assert set(np.unique(overview)) <= set(np.unique(labels))
    assert (overview[8:, :] == labels[16::2, ::2]).mean() > 0.7


def test_cog_writer_refuses_png_and_cleans_up_on_abort(tmp_path):
    palette = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"mask\.png: a Cloud-Optimized GeoTIFF needs a \.tif output"):
        writers._label_writer(tmp_path / "mask.png", FakeScene(64, 64), palette, ["a", "b"], cog=True)
    writer = writers._label_writer(tmp_path / "mask.tif", FakeScene(64, 64), palette, ["a", "b"], cog=True)
    writer.write(np.zeros((10, 64), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_segment_cli_writes_a_cog(tmp_path, model_folder):
    scene = write_scene(tmp_path / "scene.tif", 96, 80, nodata_rows=5)
    code = main([str(scene), str(tmp_path / "out.tif"), "--model", str(model_folder), "--cog", "--window", "32",
                 "--no-progress"])
    assert code == 0
    with rasterio.open(tmp_path / "out.tif") as src, rasterio.open(scene) as ref:
        assert src.profile["tiled"] and src.crs == ref.crs and src.transform == ref.transform
        assert src.nodata == VOID_ID and (src.read(1)[:5] == VOID_ID).all() and (src.read(1)[5:] < 6).all()
        if writers.has_cog_driver():
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert main([str(scene), str(tmp_path / "out.png"), "--model", str(model_folder), "--cog"]) == 2
    assert not (tmp_path / "out.png").exists()


# ---- remote scenes through /vsicurl/ ---------------------------------------------------------------------------
class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files of `root` with single-range `Range: bytes=a-b` support (GDAL's /vsicurl/ reads by range;
    http.server's SimpleHTTPRequestHandler ignores Range and always sends the whole file)."""

    root: Path
    log: list

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        path = self.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        self.log.append((self.command, self.headers.get("Range")))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            chunk = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            chunk = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Content-Type", "image/tiff")
        self.end_headers()
        if body:
            self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """(root folder, base URL, request log) of a loopback HTTP server with Range support, in a thread."""
    root = tmp_path / "served"
    root.mkdir()
    log: list = []
    handler = type("Handler", (RangeHandler,), {"root": root, "log": log})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def test_remote_scene_reads_by_range_through_vsicurl(http_root):
    root, base, log = http_root
    path = write_scene(root / "scene.tif", 512, 512)
    with rasterio.open(path) as src:
        expected = src.read(window=rasterio.windows.Window(64, 128, 32, 16))
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", VSI_CACHE="FALSE"):
        for source in (f"/vsicurl/{base}/scene.tif", f"{base}/scene.tif"):
            scene = open_scene(source)
            try:
                assert (scene.height, scene.width, scene.bands) == (512, 512, 3)
                assert scene.crs.to_epsg() == 32617 and scene.name.startswith("/vsicurl/http://127.0.0.1")
                np.testing.assert_array_equal(scene.read(128, 64, 16, 32), expected)
            finally:
                scene.close()
    ranges = [r for _, r in log if r]
    assert ranges and all(r.startswith("bytes=") for r in ranges)  # GDAL asked for byte ranges, not the file


def test_segment_cli_on_a_vsicurl_scene(http_root, tmp_path, model_folder, monkeypatch):
    root, base, log = http_root
    write_scene(root / "scene.tif", 64, 64, nodata_rows=3)
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    monkeypatch.chdir(tmp_path)
    assert main([f"/vsicurl/{base}/scene.tif", "--model", str(model_folder), "--window", "32", "--cog",
                 "--no-progress"]) == 0
    local = tmp_path / "local.tif"
    assert main([str(root / "scene.tif"), str(local), "--model", str(model_folder), "--window", "32",
                 "--no-progress"]) == 0
    with rasterio.open(tmp_path / "scene_mask.tif") as remote, rasterio.open(local) as ref:
        np.testing.assert_array_equal(remote.read(1), ref.read(1))
        assert remote.crs == ref.crs and remote.transform == ref.transform
    assert main([f"/vsicurl/{base}/missing.tif", str(tmp_path / "m.tif"), "--model", str(model_folder)]) == 1
    assert not (tmp_path / "m.tif").exists()
