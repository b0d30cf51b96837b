"""Pure-torch oriented-detection building blocks against independent references (shapely polygons, plain loops)."""

import math

import numpy as np
import pytest
import torch

shapely_geometry = pytest.importorskip("shapely.geometry")
Polygon = shapely_geometry.Polygon

from s5_hf.obb_anchors import base_anchors, grid_anchors  # noqa: E402
from s5_hf.obb_assign import max_iou_assign, random_sample  # noqa: E402
from s5_hf.obb_coder_delta import delta_decode, delta_encode  # noqa: E402
from s5_hf.obb_coder_midpoint import midpoint_decode, midpoint_encode  # noqa: E402
from s5_hf.obb_geometry import obb_to_corners, obb_to_hbb, polygon_to_obb, regularize_obb  # noqa: E402
from s5_hf.obb_iou import obb_iou  # noqa: E402
from s5_hf.obb_nms import batched_obb_nms, obb_nms  # noqa: E402
from s5_hf.obb_roi_align import extract_roi_features, map_roi_levels, rotated_roi_align  # noqa: E402


def random_boxes(n, extent=20.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.rand(n, generator=g, dtype=dtype)  # noqa: E731
    return torch.stack([r() * extent, r() * extent, r() * 12 + 0.5, r() * 12 + 0.5, (r() - 0.5) * 2 * math.pi], 1)


def shapely_iou(a, b):
    pa, pb = Polygon(obb_to_corners(a).tolist()), Polygon(obb_to_corners(b).tolist())
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return inter / union if union > 0 else 0.0


# ---- geometry ----------------------------------------------------------------------------------------------------
def test_regular_form_and_corners():
    boxes = random_boxes(50, seed=1)
    reg = regularize_obb(boxes)
    assert (reg[:, 2] >= reg[:, 3]).all() and (reg[:, 4] >= -math.pi / 2).all() and (reg[:, 4] < math.pi / 2).all()
    for a, b in zip(boxes, reg):  # same rectangle
        assert Polygon(obb_to_corners(a).tolist()).symmetric_difference(Polygon(obb_to_corners(b).tolist())).area < 1e-9
    # a 4x2 box turned by 30 degrees: hand-computed corner (+w/2, -h/2) -> (2 cos30 + sin30, 2 sin30 - cos30)
    c = obb_to_corners(torch.tensor([0.0, 0.0, 4.0, 2.0, math.pi / 6], dtype=torch.float64))
    assert torch.allclose(c[0], torch.tensor([2 * math.cos(math.pi / 6) + 0.5, 1 - math.cos(math.pi / 6)], dtype=torch.float64))
    hull = obb_to_hbb(boxes)
    corners = obb_to_corners(boxes)
    assert torch.allclose(hull[:, :2], corners.min(1).values) and torch.allclose(hull[:, 2:], corners.max(1).values)
    # polygon -> box recovers the box from its (shuffled-start) corners
    assert torch.allclose(polygon_to_obb(corners.roll(1, dims=1)), reg, atol=1e-9)


# ---- rotated IoU ---------------------------------------------------------------------------------------------------
def test_obb_iou_matches_shapely_random_pairs():
    a, b = random_boxes(40, seed=2), random_boxes(45, seed=3)
    ours = obb_iou(a, b)
    ref = torch.tensor([[shapely_iou(x, y) for y in b] for x in a], dtype=torch.float64)
    assert (ref > 0).float().mean() > 0.2  # the set really contains overlaps
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(obb_iou(a, a[:40], aligned=True), torch.ones(40, dtype=torch.float64), atol=1e-6)


def test_obb_iou_special_cases():
    d = torch.float64
    outer = torch.tensor([[10.0, 10.0, 8.0, 6.0, 0.3]], dtype=d)
    nested = torch.tensor([[10.5, 9.8, 2.0, 1.0, -1.1]], dtype=d)  # entirely inside: IoU = area ratio
    assert obb_iou(outer, nested).item() == pytest.approx(2.0 / 48.0, abs=1e-9)
    same = outer.clone()
    same_flipped = torch.tensor([[10.0, 10.0, 6.0, 8.0, 0.3 + math.pi / 2]], dtype=d)  # same rectangle, other form
    assert obb_iou(outer, same).item() == pytest.approx(1.0, abs=1e-9)
    assert obb_iou(outer, same_flipped).item() == pytest.approx(1.0, abs=1e-9)
    # shared edge: touching boxes, no area in common
    left = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=d)
    right = torch.tensor([[2.0, 0.0, 2.0, 2.0, 0.0]], dtype=d)
    assert obb_iou(left, right).item() == pytest.approx(0.0, abs=1e-9)
    # half-overlapping axis-aligned squares (collinear edges): 2/(4+4-2)
    shifted = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0]], dtype=d)
    assert obb_iou(left, shifted).item() == pytest.approx(1 / 3, abs=1e-9)
    # degenerate boxes (zero width or height) have IoU 0, also with themselves, and never NaN
    flat = torch.tensor([[10.0, 10.0, 5.0, 0.0, 0.4], [10.0, 10.0, 0.0, 0.0, 0.0]], dtype=d)
    iou = obb_iou(torch.cat([flat, outer]), torch.cat([flat, outer]))
    assert torch.isfinite(iou).all() and iou[:2].abs().max() < 1e-9 and iou[:, :2].abs().max() < 1e-9
    # 45-degree square in an axis-aligned one, against shapely
    sq = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=d)
    diamond = torch.tensor([[0.0, 0.0, 2.0, 2.0, math.pi / 4]], dtype=d)
    assert obb_iou(sq, diamond).item() == pytest.approx(shapely_iou(sq[0], diamond[0]), abs=1e-9)


def test_obb_iou_float32_and_empty():
    a, b = random_boxes(30, seed=4).float(), random_boxes(20, seed=5).float()
    ref = torch.tensor([[shapely_iou(x.double(), y.double()) for y in b] for x in a])
    assert torch.allclose(obb_iou(a, b), ref, atol=1e-4)
    assert obb_iou(a[:0], b).shape == (0, 20)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        obb_iou(a[:, :4], b)


# ---- rotated NMS ---------------------------------------------------------------------------------------------------
def naive_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(shapely_iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("thr", [0.1, 0.5, 0.8])
def test_obb_nms_matches_naive_loop(thr):
    boxes = random_boxes(60, extent=25, seed=6)
    # plus jittered copies, so that high thresholds also suppress something
    jitter = torch.randn(20, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.15
    boxes = torch.cat([boxes, boxes[:20] + jitter])
    scores = torch.rand(80, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    keep = obb_nms(boxes, scores, thr).tolist()
    assert keep == naive_nms(boxes, scores, thr)
    assert 0 < len(keep) < 80


def test_batched_nms_only_within_groups():
    boxes = random_boxes(60, extent=15, seed=8)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    groups = torch.arange(60) % 3
    keep = set(batched_obb_nms(boxes, scores, groups, 0.3).tolist())
    expected = set()
    for g in range(3):
        idx = (groups == g).nonzero(as_tuple=True)[0]
        expected |= {idx[i].item() for i in naive_nms(boxes[idx], scores[idx], 0.3)}
    assert keep == expected


# ---- box coders ------------------------------------------------------------------------------------------------------
def test_midpoint_coder_round_trip_and_hand_values():
    boxes = regularize_obb(random_boxes(200, seed=10))
    g = torch.Generator().manual_seed(1)
    hull = obb_to_hbb(boxes)
    size = (hull[:, 2:] - hull[:, :2]) * (0.5 + torch.rand(200, 2, generator=g, dtype=torch.float64))
    center = (hull[:, :2] + hull[:, 2:]) / 2 + torch.randn(200, 2, generator=g, dtype=torch.float64)
    anchors = torch.cat([center - size / 2, center + size / 2], 1)  # near the box, never empty
    decoded = midpoint_decode(anchors, midpoint_encode(anchors, boxes))
    assert torch.allclose(decoded[:, :4], boxes[:, :4], atol=1e-6)
    assert torch.allclose(torch.cos(2 * (decoded[:, 4] - boxes[:, 4])), torch.ones(200, dtype=torch.float64), atol=1e-6)
    # Hand check: 4x2 box at (10, 20), 30 deg, anchor = its hull (width 4cos30 + 2sin30, height 4sin30 + 2cos30).
    # Top corner = c + R(a)(-w/2, -h/2) = c + (-2cos30 + sin30, -2sin30 - cos30); right corner = c + R(a)(w/2, -h/2)
    # = c + (2cos30 + sin30, 2sin30 - cos30). So da = (sin30 - 2cos30) / width, db = (2sin30 - cos30) / height.
    box = torch.tensor([[10.0, 20.0, 4.0, 2.0, math.pi / 6]], dtype=torch.float64)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    hw, hh = 4 * c + 2 * s, 4 * s + 2 * c
    anchor = torch.tensor([[10 - hw / 2, 20 - hh / 2, 10 + hw / 2, 20 + hh / 2]], dtype=torch.float64)
    d = midpoint_encode(anchor, box)
    expected = [0, 0, 0, 0, (s - 2 * c) / hw / 0.5, (2 * s - c) / hh / 0.5]
    assert torch.allclose(d[0], torch.tensor(expected, dtype=torch.float64), atol=1e-9)
    # axis-aligned box: da = db = +1/2 (rightmost top corner, lowest right corner)
    d = midpoint_encode(torch.tensor([[0.0, 0.0, 4.0, 2.0]]), torch.tensor([[2.0, 1.0, 4.0, 2.0, 0.0]]))
    assert torch.allclose(d[0], torch.tensor([0, 0, 0, 0, 1.0, 1.0]), atol=1e-6)


def test_delta_coder_round_trip_and_hand_values():
    props = regularize_obb(random_boxes(200, seed=11))
    gts = regularize_obb(random_boxes(200, seed=12))
    decoded = delta_decode(props, delta_encode(props, gts))
    assert torch.allclose(decoded, gts, atol=1e-6)
    # Hand check: proposal at the origin turned 90 deg; target 2 px further along the proposal's own x axis
    # (i.e. +2 in image y), twice as wide, 0.1 rad more turned -> (2/w, 0, log 2, 0, 0.1) / stds.
    p = torch.tensor([[0.0, 0.0, 4.0, 2.0, -math.pi / 2]], dtype=torch.float64)
    g = torch.tensor([[0.0, -2.0, 8.0, 2.0, -math.pi / 2 + 0.1]], dtype=torch.float64)
    d = delta_encode(p, g)
    assert torch.allclose(d[0], torch.tensor([0.5 / 0.1, 0, math.log(2) / 0.2, 0, 0.1 / 0.1], dtype=torch.float64), atol=1e-9)
    # the swapped form is used when it is the smaller turn: a 2x4 target at the same angle = 4x2 turned 90 deg
    g2 = torch.tensor([[0.0, 0.0, 2.0, 4.0, -math.pi / 2 + math.pi / 2 - 0.05]], dtype=torch.float64)
    assert delta_encode(p, g2)[0, 4].abs().item() == pytest.approx(0.05 / 0.1, abs=1e-9)


# ---- anchors ---------------------------------------------------------------------------------------------------------
def test_anchors():
    base = base_anchors(4)
    # scale 8, stride 4 -> 32 px squares for ratio 1; ratio 0.5 is wider (w = 32/sqrt(0.5), h = 32 sqrt(0.5))
    assert torch.allclose(base[1], torch.tensor([-16.0, -16, 16, 16]))
    assert torch.allclose(base[0, 2] - base[0, 0], torch.tensor(32 / math.sqrt(0.5)))
    anchors = grid_anchors((3, 5), 8)
    assert anchors.shape == (3 * 5 * 3, 4)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    # location (y=1, x=2) is the 8th location; its 3 anchors follow each other
    assert torch.allclose(centers[7 * 3 : 8 * 3], torch.tensor([[16.0, 8.0]] * 3))


# ---- assigner and sampler ----------------------------------------------------------------------------------------------
def test_max_iou_assigner():
    overlaps = torch.tensor([[0.8, 0.5, 0.1, 0.25, 0.0], [0.2, 0.6, 0.0, 0.1, 0.31]])
    rpn = max_iou_assign(overlaps, 0.7, 0.3, 0.3, match_low_quality=True)
    # box 0 >= 0.7 -> gt 1; box 1 best 0.6 in (0.3, 0.7) but it is gt 2's best -> low-quality match to gt 2;
    # box 2 and 3 < 0.3 -> negative; box 4 0.31 ignored
    assert rpn.gt_indices.tolist() == [1, 2, 0, 0, -1]
    roi = max_iou_assign(overlaps, 0.5, 0.5, 0.5, match_low_quality=False)
    assert roi.gt_indices.tolist() == [1, 2, 0, 0, 0]
    empty = max_iou_assign(torch.zeros(0, 4), 0.5, 0.5, 0.5, False)
    assert empty.gt_indices.tolist() == [0, 0, 0, 0]


def test_random_sampler():
    labels = torch.tensor([1] * 50 + [0] * 500 + [-1] * 20)
    pos, neg = random_sample(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert pos.numel() == 50 and neg.numel() == 206  # too few positives: negatives fill up to 256
    assert (labels[pos] > 0).all() and (labels[neg] == 0).all() and len(set(neg.tolist())) == 206
    pos, neg = random_sample(torch.tensor([1] * 400 + [0] * 400), 512, 0.25)
    assert pos.numel() == 128 and neg.numel() == 384


# ---- rotated RoIAlign ------------------------------------------------------------------------------------------------
def loop_roi_align(feat, roi, n, scale, k):
    """Per-pixel reference: every bin, every sample, the four-neighbour bilinear rule written out by hand."""
    c, height, width = feat.shape
    _, cx, cy, w, h, a = [float(v) for v in roi]
    out = np.zeros((c, n, n))
    f = feat.numpy()
    for i in range(n):
        for j in range(n):
            acc = np.zeros(c)
            for p in range(k):
                for q in range(k):
                    u = -w / 2 + (j + (q + 0.5) / k) * w / n
                    v = -h / 2 + (i + (p + 0.5) / k) * h / n
                    x = (cx + u * math.cos(a) - v * math.sin(a)) * scale - 0.5
                    y = (cy + u * math.sin(a) + v * math.cos(a)) * scale - 0.5
                    if y < -1 or y > height or x < -1 or x > width:
                        continue
                    y, x = max(y, 0.0), max(x, 0.0)
                    y0, x0 = int(y), int(x)
                    if y0 >= height - 1:
                        y0 = y1 = height - 1
                        y = float(y0)
                    else:
                        y1 = y0 + 1
                    if x0 >= width - 1:
                        x0 = x1 = width - 1
                        x = float(x0)
                    else:
                        x1 = x0 + 1
                    ly, lx = y - y0, x - x0
                    acc += ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
                            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])
            out[:, i, j] = acc / (k * k)
    return torch.from_numpy(out)


def test_rotated_roi_align_matches_loop():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 12, 15, generator=g, dtype=torch.float64)
    rois = torch.tensor([
        [0, 30.0, 20.0, 24.0, 10.0, 0.4],
        [1, 5.0, 44.0, 30.0, 16.0, -1.2],   # partly outside the map
        [1, 58.0, 2.0, 8.0, 8.0, 2.5],       # at the corner
        [0, 200.0, 200.0, 8.0, 4.0, 0.0],    # entirely outside -> zeros
        [0, 20.0, 20.0, 0.0, 0.0, 0.3],      # degenerate box: all samples at the centre
    ], dtype=torch.float64)
    ours = rotated_roi_align(feats, rois, output_size=7, spatial_scale=0.25, sampling_ratio=2)
    ref = torch.stack([loop_roi_align(feats[int(r[0])], r, 7, 0.25, 2) for r in rois])
    assert torch.allclose(ours, ref, atol=1e-10)
    assert ours[3].abs().max() == 0


def test_roi_feature_extractor_levels_and_enlargement():
    g = torch.Generator().manual_seed(4)
    maps = [torch.randn(1, 2, 64 // s, 64 // s, generator=g, dtype=torch.float64) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0, 30.0, 30.0, 20.0, 10.0, 0.2], [0, 32.0, 32.0, 320.0, 280.0, -0.5]], dtype=torch.float64)
    assert map_roi_levels(rois, 4).tolist() == [0, 2]  # floor(log2(sqrt(200)/56 + 1e-6)) < 0 -> 0; sqrt(320*280)/56 = 5.34 -> 2
    out = extract_roi_features(maps, (4, 8, 16, 32), rois)
    wide = rois.clone()
    wide[:, 3] *= 1.4
    wide[:, 4] *= 1.2
    assert torch.allclose(out[0], loop_roi_align(maps[0][0], wide[0], 7, 1 / 4, 2))
    assert torch.allclose(out[1], loop_roi_align(maps[2][0], wide[1], 7, 1 / 16, 2))


def test_rotated_roi_align_half_precision_features_keep_positions():
    # bf16 features of a large map: positions must not be rounded to bf16 (8 bits: steps of 4 px near 1000).
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(1, 2, 300, 300, generator=g)
    rois = torch.tensor([[0, 1001.3, 997.7, 40.0, 20.0, 0.3]])
    ref = rotated_roi_align(feats, rois, 7, 0.25, 2)
    half = rotated_roi_align(feats.bfloat16(), rois, 7, 0.25, 2)
    assert half.dtype == torch.bfloat16
    expected = rotated_roi_align(feats.bfloat16().float(), rois, 7, 0.25, 2)  # same values, float32 positions
    assert torch.allclose(half.float(), expected, atol=2e-2) and torch.allclose(ref, expected, atol=5e-2)
