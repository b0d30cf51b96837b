"""Large-scene detection: tiling + merging equals the model on one tile, GeoJSON in the scene's CRS, CLI checks."""

import json

import numpy as np
import pytest
import torch

from s5_hf.detection.geopackage import read_geopackage_polygons
from s5_hf.detection.scene import detect_scene, main, to_geojson, write_detections
from s5_hf.detection.synthetic import synthetic_scene
from s5_hf.modeling_s5_detection import S5ForOrientedDetection
from s5_hf.obb_geometry import obb_to_corners



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(tiny_detection_config):
    torch.manual_seed(0)
    return S5ForOrientedDetection(tiny_detection_config(rpn_pre_nms=100, rpn_max_proposals=40, tasks=["dior", "dota"])).eval()


def test_single_tile_scene_equals_the_model(model):
    pixels, _, _ = synthetic_scene(np.random.default_rng(0), 64, 64, 3)
    result = detect_scene(model, pixels, task="dota", tile=64, overlap=0, nms_iou=1.0)  # NMS 1.0: merging keeps all
    x = (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() - torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)) \
        / torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    with torch.no_grad():
        out = model(x[None], task="dota")
    order = np.argsort(-out.scores[0].numpy(), kind="stable")
    assert np.allclose(result["boxes"], out.boxes[0].numpy()[order], atol=1e-5)
    assert (result["labels"] == out.labels[0].numpy()[order]).all()


def test_tiles_are_shifted_back_to_scene_pixels(model):
    rng = np.random.default_rng(1)
    scene = np.zeros((96, 160, 3), np.uint8)
    patch, _, _ = synthetic_scene(rng, 64, 64, 3)
    scene[32:96, 96:160] = patch  # the content of the tile at (top 32, left 96)
    result = detect_scene(model, scene, task="dior", tile=64, overlap=32, nms_iou=1.0)
    x = (torch.from_numpy(patch.copy()).permute(2, 0, 1).float() - torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)) \
        / torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    with torch.no_grad():
        own = model(x[None], task="dior").boxes[0].numpy()
    own[:, 0] += 96
    own[:, 1] += 32
    found = [np.abs(result["boxes"] - b).max(1).min() < 1e-4 for b in own]
    assert len(own) and all(found)
    with pytest.raises(ValueError, match="8-bit RGB"):
        detect_scene(model, scene.astype(np.uint16), task="dior", tile=64, overlap=0)
    with pytest.raises(ValueError, match="multiple of 32"):
        detect_scene(model, scene, tile=50)


def test_geojson_uses_the_affine_transform_and_crs():
    affine = pytest.importorskip("affine")
    rasterio_crs = pytest.importorskip("rasterio.crs")
    det = {"boxes": np.array([[10.0, 20.0, 8.0, 4.0, 0.5]]), "scores": np.array([0.8]), "labels": np.array([1])}
    transform = affine.Affine(0.5, 0.0, 300000.0, 0.0, -0.5, 5000000.0)
    gj = to_geojson(det, ["a", "b"], transform, rasterio_crs.CRS.from_epsg(32633))
    ring = np.array(gj["features"][0]["geometry"]["coordinates"][0])
    corners = obb_to_corners(torch.tensor(det["boxes"][0])).numpy()
    assert np.allclose(ring[:4], np.stack([300000 + 0.5 * corners[:, 0], 5000000 - 0.5 * corners[:, 1]], 1))
    assert np.allclose(ring[0], ring[4])
    assert gj["features"][0]["properties"] == {"label": 1, "class": "b", "score": 0.8}
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"


def test_cli_on_a_geotiff(model, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine

    model.save_pretrained(tmp_path / "model")
    pixels, _, _ = synthetic_scene(np.random.default_rng(2), 64, 96, 3)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", height=64, width=96, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(2.0, 0, 500000, 0, -2.0, 4000000)) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
    out = tmp_path / "boxes.geojson"
    assert main([str(path), str(out), "--model", str(tmp_path / "model"), "--task", "dota", "--tile", "64", "--overlap", "32"]) == 0
    gj = json.loads(out.read_text())
    assert gj["crs"]["properties"]["name"].endswith("32633") and gj["features"]
    xs = np.array([p[0] for f in gj["features"] for p in f["geometry"]["coordinates"][0]])
    assert (xs > 499000).all() and (xs < 501000).all()  # map coordinates, not pixels
    with pytest.raises(SystemExit):
        main([str(path), str(out), "--model", str(tmp_path / "model")])  # exists, no --overwrite
    with pytest.raises(SystemExit):
        main([str(path), str(tmp_path / "boxes.shp"), "--model", str(tmp_path / "model")])
    assert not (tmp_path / "boxes.shp").exists()

    # The same run as a GeoPackage: read back by GDAL (pyogrio) and by plain sqlite3, it holds the GeoJSON's
    # polygons, classes and scores, in the scene's CRS.
    gpkg = tmp_path / "boxes.gpkg"
    assert main([str(path), str(gpkg), "--model", str(tmp_path / "model"), "--task", "dota", "--tile", "64", "--overlap", "32"]) == 0
    rings = [np.array(f["geometry"]["coordinates"][0]) for f in gj["features"]]
    props = [f["properties"] for f in gj["features"]]
    back = read_geopackage_polygons(gpkg)
    assert back["srs"][1:4] == (32633, "EPSG", 32633) and "UTM zone 33N" in back["srs"][4]
    assert back["labels"] == [p["label"] for p in props] and back["classes"] == [p["class"] for p in props]
    assert np.allclose(back["scores"], [p["score"] for p in props])
    assert all(np.allclose(a, b) for a, b in zip(back["rings"], rings)) and len(back["rings"]) == len(rings)
    pyogrio = pytest.importorskip("pyogrio")
    info = pyogrio.read_info(gpkg)
    assert info["crs"] == "EPSG:32633" and info["geometry_type"] == "Polygon" and info["features"] == len(rings)
    meta, _, geometry, fields = pyogrio.raw.read(gpkg)
    assert list(meta["fields"]) == ["label", "class", "score"]
    assert list(fields[1]) == [p["class"] for p in props] and np.allclose(fields[2], [p["score"] for p in props])
    import shapely

    polygons = shapely.from_wkb(geometry)
    assert all(np.allclose(shapely.get_coordinates(g), r) for g, r in zip(polygons, rings))


def test_geopackage_without_crs_or_detections(tmp_path):
    det = {"boxes": np.array([[10.0, 20.0, 8.0, 4.0, 0.5]]), "scores": np.array([0.25]), "labels": np.array([0])}
    write_detections(tmp_path / "pixels.gpkg", det, ["plane"])
    back = read_geopackage_polygons(tmp_path / "pixels.gpkg")
    assert back["srs"][1] == -1 and back["classes"] == ["plane"] and back["scores"] == [0.25]
    assert np.allclose(back["rings"][0][:4], obb_to_corners(torch.tensor(det["boxes"][0])).numpy())
    empty = {"boxes": np.zeros((0, 5)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    write_detections(tmp_path / "empty.gpkg", empty, ["plane"])
    assert read_geopackage_polygons(tmp_path / "empty.gpkg")["rings"] == []
    with pytest.raises(ValueError, match=".shp"):
        write_detections(tmp_path / "x.shp", det, ["plane"])
    assert not (tmp_path / "x.shp").exists()
