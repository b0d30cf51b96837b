"""Detection data: DIOR-R / DOTA-v2 readers on synthetic look-alikes, DOTA patching and merging, rotated VOC07 mAP."""

import math

import numpy as np
import pytest
import torch

from s5_hf.configuration_s5_detection import DIOR_R_CLASSES, DOTA_V2_CLASSES
from s5_hf.data.images import DataFileError
from s5_hf.detection import (
    make_fake_dior_r, make_fake_dota, merge_patch_detections, read_dior_r, read_dota, rotated_voc_map,
    split_dota_image, write_dota_submission,
)
from s5_hf.detection.dior import parse_dior_r_xml
from s5_hf.detection.metric import average_precision_11point
from s5_hf.detection.synthetic import synthetic_scene
from s5_hf.obb_iou import obb_iou


# ---- mAP -------------------------------------------------------------------------------------------------------------
def box(cx, cy, w=10.0, h=4.0, a=0.0):
    return [cx, cy, w, h, a]


def test_map_hand_made_case():
    # Class 0: 2 ground truths (+1 difficult); detections by score: TP (0.9), FP (0.8, no overlap), detection on the
    # difficult box (0.75, ignored), duplicate of the first gt (0.72, FP), TP on the second gt turned 90 deg
    # as the other form (0.7). Precision/recall after each counted one: (1, 1/2), (1/2, 1/2), (1/3, 1/2), (1/2, 1).
    # 11-point AP: t = 0..0.5 -> 1.0 (6 points), t = 0.6..1.0 -> 0.5 (5 points) = 8.5 / 11.
    # Class 1: one gt, one detection with IoU 1/3 < 0.5 -> AP 0. Class 2: no ground truth -> excluded from the mean.
    gt = {"boxes": np.array([box(20, 20), box(60, 60), box(90, 20), box(40, 90)]), "labels": np.array([0, 0, 0, 1]),
          "difficult": np.array([False, False, True, False])}
    det = {
        "boxes": np.array([box(20, 20), box(80, 80), box(90, 20), box(20.5, 20), box(60, 60, 4, 10, math.pi / 2),
                           box(45, 90), box(5, 5)]),
        "scores": np.array([0.9, 0.8, 0.75, 0.72, 0.7, 0.9, 0.5]),
        "labels": np.array([0, 0, 0, 0, 0, 1, 2]),
    }
    result = rotated_voc_map([det], [gt], num_classes=3)
    assert result["ap"][0] == pytest.approx(8.5 / 11)
    assert result["ap"][1] == 0.0 and result["ap"][2] is None
    assert result["map"] == pytest.approx((8.5 / 11 + 0) / 2)
    assert result["num_gts"] == [2, 1, 0]
    # IoU of the class-1 pair: shifted by half the width -> 5*4 / (40 + 40 - 20) = 1/3; at threshold 0.3 it is a TP
    assert rotated_voc_map([det], [gt], 3, iou_threshold=0.3)["ap"][1] == pytest.approx(1.0)


def test_11point_ap_formula():
    assert average_precision_11point(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx((6 + 2.5) / 11)
    assert average_precision_11point(np.array([]), np.array([])) == 0.0


def test_map_perfect_and_empty():
    gts = [{"boxes": np.array([box(20, 20, a=0.3)]), "labels": np.array([1])}, {"boxes": np.zeros((0, 5)), "labels": np.zeros(0)}]
    dets = [{"boxes": np.array([box(20, 20, a=0.3)]), "scores": np.array([0.5]), "labels": np.array([1])},
            {"boxes": np.zeros((0, 5)), "scores": np.zeros(0), "labels": np.zeros(0)}]
    assert rotated_voc_map(dets, gts, 2)["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="detections for 1 images but ground truths for 2"):
        rotated_voc_map(dets[:1], gts, 2)


# ---- DIOR-R --------------------------------------------------------------------------------------------------------
def test_dior_r_reader_reads_the_generated_layout(tmp_path):
    root = make_fake_dior_r(tmp_path / "DIOR-R", num_trainval=3, num_test=2, size=64, seed=5)
    rng = np.random.default_rng(5)  # the generator's own stream, replayed: the reader must return the same boxes
    expected = [synthetic_scene(rng, 64, 64, 3, 3) for _ in range(5)]
    rows = list(read_dior_r(root, "trainval")) + list(read_dior_r(root, "test"))
    assert [r["id"] for r in rows] == ["00001", "00002", "00003", "00004", "00005"]
    for row, (pixels, boxes, labels) in zip(rows, expected):
        assert row["image"].shape == (64, 64, 3)
        blocks = lambda a: a.astype(float).reshape(4, 16, 4, 16, 3).mean((1, 3))  # noqa: E731 (JPEG keeps block means)
        assert np.abs(blocks(row["image"]) - blocks(pixels)).max() < 4
        assert (row["labels"] == labels).all() and not row["difficult"].any()
        iou = obb_iou(torch.tensor(row["boxes"], dtype=torch.float64), torch.tensor(boxes, dtype=torch.float64))
        assert torch.allclose(iou.diagonal(), torch.ones(len(boxes), dtype=torch.float64), atol=1e-3)


def test_dior_r_xml_variants_and_errors(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>Airplane</name><difficult>1</difficult><robndbox><cx>10</cx><cy>20</cy>"
                   "<w>4</w><h>8</h><angle>0.2</angle></robndbox></object></annotation>")
    ann = parse_dior_r_xml(xml)
    assert ann["labels"].tolist() == [0] and ann["difficult"].tolist() == [True]
    assert np.allclose(ann["boxes"][0], [10, 20, 8, 4, 0.2 - math.pi / 2], atol=1e-6)  # regular form: w >= h
    xml.write_text("<annotation><object><name>tank</name><robndbox><cx>1</cx></robndbox></object></annotation>")
    with pytest.raises(DataFileError, match="unknown class 'tank'"):
        parse_dior_r_xml(xml)
    xml.write_text("<annotation><object><name>ship</name><robndbox><cx>1</cx><cy>x</cy></robndbox></object></annotation>")
    with pytest.raises(DataFileError, match="<cy> is not a number"):
        parse_dior_r_xml(xml)
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/trainval.txt"):
        list(read_dior_r(tmp_path, "trainval"))
    with pytest.raises(ValueError, match="split must be one of"):
        list(read_dior_r(tmp_path, "train"))


# ---- DOTA ------------------------------------------------------------------------------------------------------------
def test_dota_split_patches_and_iof():
    pixels = np.zeros((100, 130, 3), np.uint8)
    ann = {"boxes": np.array([[10, 10, 8, 4, 0.0],     # inside the first patches only
                              [60, 30, 20, 4, 0.0],    # straddles x = 50..64: 70 % rule
                              [90, 90, 2, 2, 0.0]]),   # tiny: ignored
           "labels": np.array([0, 1, 2]), "difficult": np.array([False, False, False])}
    patches = list(split_dota_image(pixels, ann, patch_size=64, overlap=14, drop_empty=False))
    # windows along x: 0, 50, then shifted back to 66; along y: 0, 36 (100 - 64)
    assert [p["offset"] for p in patches] == [(0, 0), (50, 0), (66, 0), (0, 36), (50, 36), (66, 36)]
    by_offset = {p["offset"]: p for p in patches}
    assert by_offset[(0, 0)]["labels"].tolist() == [0, 1]  # x 50..70 of 64: 70 % inside -> kept
    assert np.allclose(by_offset[(50, 0)]["boxes"][:, 0], [10.0])  # the wide box, shifted by 50
    assert by_offset[(66, 0)]["labels"].tolist() == []  # box 1 spans 50-70: only 4/20 inside -> dropped
    kept = list(split_dota_image(pixels, ann, patch_size=64, overlap=14, drop_empty=True))
    assert [p["offset"] for p in kept] == [(0, 0), (50, 0)]


def test_dota_reader_and_merge_round_trip(tmp_path):
    root = make_fake_dota(tmp_path / "DOTA", num_train=2, num_val=1, size=160)
    train = list(read_dota(root, "train", patch_size=64, overlap=16))
    assert train and all(len(p["boxes"]) for p in train)  # empty patches dropped in training
    val = list(read_dota(root, "val", patch_size=64, overlap=16))
    assert any(len(p["boxes"]) == 0 for p in val)  # kept at evaluation
    # Ground truth as "detections" of every patch, merged back: the full-image boxes come back once each.
    full = [(image_id, p) for image_id, p in [(p["image_id"], p) for p in val]]
    merged = merge_patch_detections([{"image_id": i, "offset": p["offset"], "boxes": p["boxes"],
                                      "scores": np.ones(len(p["boxes"])), "labels": p["labels"]} for i, p in full])
    from s5_hf.detection.dota import parse_dota_labels
    truth = parse_dota_labels(root / "val" / "labelTxt" / "P0003.txt")
    got = merged["P0003"]
    assert len(got["boxes"]) == len(truth["boxes"]) > 0
    iou = obb_iou(torch.tensor(got["boxes"], dtype=torch.float64), torch.tensor(truth["boxes"], dtype=torch.float64))
    assert (iou.max(1).values > 0.999).all()
    files = write_dota_submission(merged, tmp_path / "submission")
    assert len(files) == 18 and files[0].name == "Task1_plane.txt"
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert len(lines) == len(truth["boxes"]) and all(line.startswith("P0003 1.000000 ") and len(line.split()) == 10 for line in lines)


def test_dota_label_errors(tmp_path):
    from s5_hf.detection.dota import parse_dota_labels
    path = tmp_path / "x.txt"
    path.write_text("imagesource:GoogleEarth\ngsd:0.5\n1 1 5 1 5 3 1 3 boat 0\n")
    with pytest.raises(DataFileError, match="line 3: unknown class 'boat'"):
        parse_dota_labels(path)
    path.write_text("1 1 5 1 5 3 plane 0\n")
    with pytest.raises(DataFileError, match="line 1 has 8 fields"):
        parse_dota_labels(path)
    path.write_text("1 1 5 1 5 3 1 3 plane 1\n")
    ann = parse_dota_labels(path)
    assert ann["labels"].tolist() == [DOTA_V2_CLASSES.index("plane")] and ann["difficult"].tolist() == [True]
    assert np.allclose(ann["boxes"], [[3, 2, 4, 2, 0]], atol=1e-6)
    assert DIOR_R_CLASSES[0] == "airplane" and len(DIOR_R_CLASSES) == 20 and len(DOTA_V2_CLASSES) == 18


def test_evaluate_module_matches_the_function():
    evaluate = pytest.importorskip("evaluate")
    from pathlib import Path

    import s5_hf

    metric = evaluate.load(str(Path(s5_hf.__file__).parent / "evaluation" / "evaluate_metric" / "s5_rotated_map.py"), keep_in_memory=True)
    gt = {"boxes": [box(20, 20), box(60, 60), box(90, 20)], "labels": [0, 0, 1], "difficult": [False, False, False]}
    det = {"boxes": [box(20, 20), box(80, 80), box(60, 60, 4, 10, math.pi / 2)], "scores": [0.9, 0.8, 0.7], "labels": [0, 0, 0]}
    metric.add(predictions=det, references=gt)
    got = metric.compute(num_labels=3)
    # class 0: TP, FP, TP -> 11-point AP (6 * 1 + 5 * 2/3) / 11; class 1 missed -> 0; class 2 has no ground truth
    assert got["ap"][0] == pytest.approx((6 + 5 * 2 / 3) / 11) and got["ap"][1] == 0 and math.isnan(got["ap"][2])
    assert got["map"] == pytest.approx(rotated_voc_map([det], [gt], 3)["map"])


def test_parquet_shards_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    from s5_hf.data import to_parquet_shards
    from s5_hf.detection.shards import detection_dataset, rows_from_dataset

    root = make_fake_dota(tmp_path / "DOTA", num_train=1, num_val=0, size=128)
    rows = list(read_dota(root, "train", patch_size=64, overlap=16, drop_empty=False))  # 9 patches, some empty
    assert len(rows) == 9 and any(len(r["boxes"]) == 0 for r in rows)
    to_parquet_shards(detection_dataset(rows, "dota"), tmp_path / "shards", validate=False, min_shards=2,
                      card={"pretty_name": "synthetic DOTA-v2 patches"})
    back = list(rows_from_dataset(datasets.load_dataset(str(tmp_path / "shards"), split="train")))
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    for a, b in zip(rows, back):
        assert (a["image"] == b["image"]).all() and np.allclose(a["boxes"], b["boxes"]) and a["offset"] == b["offset"]
        assert (a["labels"] == b["labels"]).all() and b["image_id"] == a["image_id"]
    bad = dict(rows[0], boxes=np.full((1, 5), np.nan, np.float32), labels=np.array([0]), difficult=np.array([False]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        detection_dataset([bad], "dota")
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        detection_dataset([dict(bad, boxes=np.zeros((1, 5)), labels=np.array([0, 1]))], "dota")


def test_images_without_objects(tmp_path):
    from s5_hf.detection.dota import parse_dota_labels

    (tmp_path / "e.txt").write_text("imagesource:GoogleEarth\ngsd:0.5\n")
    (tmp_path / "e.xml").write_text("<annotation><filename>x.jpg</filename></annotation>")
    for ann in (parse_dota_labels(tmp_path / "e.txt"), parse_dior_r_xml(tmp_path / "e.xml")):
        assert ann["boxes"].shape == (0, 5) and ann["labels"].shape == (0,) and ann["difficult"].shape == (0,)
