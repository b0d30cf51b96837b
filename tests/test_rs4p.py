"""RS4P selection: entropy, quotas, quota walk, k-means, pool readers, and whole runs (resume, failures,
two processes under torchrun)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from dataclasses import asdict
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.data import load_benchmark, to_parquet_shards
from s5_hf.data.synthetic import make_fake_isaid, make_fake_unlabeled_pool
from s5_hf.files import temporary_sibling
from s5_hf.rs4p import (
    ChunkScorer,
    RawImage,
    ScoringOptions,
    SelectionArguments,
    assign_to_prototypes,
    entropy_order,
    foreground_entropy,
    largest_remainder_quotas,
    open_pool,
    quota_walk,
    run_selection,
    score_logits,
    select_by_quota,
    spherical_kmeans,
)

REPO = Path(__file__).resolve().parents[1]
# Runs a selection and SIGKILLs itself (no cleanup, no finally blocks) at a given point: in the middle of
# writing the (N+1)-th score shard, leaving half of it under its temporary name, or after N rows of the
# output dataset.
KILLER = r"""
import json, os, signal, sys
import s5_hf.data.shards as shards
import s5_hf.rs4p.scoring as scoring
from s5_hf.files import temporary_sibling
from s5_hf.rs4p import SelectionArguments, run_selection

stage, after, arguments = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
calls = [0]

def die_after(owner, name, before_death=None):
    original = getattr(owner, name)
    def wrapper(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            if before_death is not None:
                before_death(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    setattr(owner, name, wrapper)

def half_a_shard(store, index, table):
    store.directory.mkdir(parents=True, exist_ok=True)
    temporary_sibling(store.path(index)).write_bytes(b"PAR1" + bytes(64))

if stage == "scoring":
    die_after(scoring.ScoreStore, "write", half_a_shard)
else:
    die_after(shards._RollingWriter, "add")
run_selection(SelectionArguments(**arguments))
sys.exit("the run was not killed")
"""
SCRIPT = REPO / "training" / "select_rs4p.py"
SOURCES = ("millionaid", "samrs", "star")
IMAGE_SIZE = 64


# ---- fixtures ---------------------------------------------------------------------------------------------
def tiny_model(seed: int = 0) -> S5ForSemanticSegmentation:
    torch.manual_seed(seed)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=IMAGE_SIZE,
                      patch_size=16, out_indices=[1, 2, 3, 4], decoder_hidden_size=16, tasks=["isaid"])
    model = S5ForSemanticSegmentation(config).eval()
    # Random BatchNorm statistics and a sharper classifier so predictions (and entropies) differ across images.
    g = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.2)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    with torch.no_grad():
        for classifier in model.classifiers:
            classifier[-1].weight.mul_(100.0)
    return model


def random_image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def png_16bit_rgb(array: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow opens these as 8-bit "RGB" and cannot write them)."""
    height, width, _ = array.shape
    raw = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


#: Pool images that decode but are not 8-bit RGB, or are constant, and the start of the reason each gets.
UNUSABLE = {
    "star/star_16bit.png": "unsupported pixel format: 16-bit I;16 image",
    "star/star_16bit_rgb.png": "unsupported pixel format: 16-bit RGB image",
    "star/star_16bit.tif": "unsupported pixel format: 16-bit I;16 image",
    "star/star_float.tif": "unsupported pixel format: 32-bit F image",
    "star/star_4band.tif": "unsupported pixel format: mode 'RGB' with 4 band(s)",
    "millionaid/millionaid_constant.png": "constant image",
}


def write_unusable_images(root: Path, rng: np.random.Generator) -> None:
    # Sensor-like ranges: read as 8 bits, 12-bit data is nearly black and float reflectances all black, and dark
    # images have the lowest entropy, so they would be selected first.
    twelve_bit = rng.integers(0, 4096, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint16)
    (root / "star" / "star_16bit.png").write_bytes(encode(twelve_bit))
    (root / "star" / "star_16bit_rgb.png").write_bytes(png_16bit_rgb(np.stack([twelve_bit] * 3, axis=-1)))
    (root / "star" / "star_16bit.tif").write_bytes(encode(twelve_bit, "TIFF"))
    (root / "star" / "star_float.tif").write_bytes(encode(rng.random((IMAGE_SIZE, IMAGE_SIZE), np.float32), "TIFF"))
    (root / "star" / "star_4band.tif").write_bytes(four_band_tiff(rng))
    (root / "millionaid" / "millionaid_constant.png").write_bytes(encode(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 90,
                                                                                 np.uint8)))


def four_band_tiff(rng: np.random.Generator) -> bytes:
    """An RGB + near-infrared TIFF (Pillow opens it as "RGB", dropping the fourth band)."""
    buffer = io.BytesIO()
    Image.frombytes("RGBX", (IMAGE_SIZE, IMAGE_SIZE), rng.bytes(IMAGE_SIZE * IMAGE_SIZE * 4)).save(buffer, "TIFF")
    return buffer.getvalue()


def make_pool_folder(root: Path, num_images: int = 190, corrupt: bool = True) -> Path:
    """The shared fake pool (`<root>/<source>/<source>_<n>.<ext>`) plus two off-size images (resize path), a
    non-image file and, with `corrupt`, a garbage "PNG" and a truncated JPEG in 'samrs' and the `UNUSABLE`
    images (200 images in all by default)."""
    make_fake_unlabeled_pool(root, num_images=num_images, size=IMAGE_SIZE, sources=SOURCES, seed=0)
    rng = np.random.default_rng(0)
    (root / "millionaid" / "millionaid_small.jpg").write_bytes(encode(random_image(rng, 48), "JPEG"))
    (root / "star" / "star_large.png").write_bytes(encode(random_image(rng, 80)))
    (root / "star" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "samrs" / "broken.png").write_bytes(b"definitely not a png")
        (root / "samrs" / "truncated.jpg").write_bytes(encode(random_image(rng), "JPEG")[:300])
        write_unusable_images(root, rng)
    return root


def make_labeled(root: Path, num_scenes: int = 30) -> Path:
    """The fake iSAID (scenes of 32-96 px) read by its reader and written as Parquet shards, as a real
    labeled set would be prepared."""
    make_fake_isaid(root / "raw", num_images=(num_scenes, 1), size=IMAGE_SIZE)
    dataset = load_benchmark("isaid", root / "raw", "train", patch_size=None, cache_dir=str(root / "cache"))
    to_parquet_shards(dataset, root / "parquet", shard_size_mb=1)
    return root / "parquet"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs4p")
    model_dir = root / "model"
    tiny_model().save_pretrained(model_dir)
    return {
        "root": root,
        "model": model_dir,
        "pool": make_pool_folder(root / "pool"),
        "labeled": make_labeled(root / "labeled"),
    }


def arguments(workspace, output_dir: Path, **overrides) -> SelectionArguments:
    values = dict(pool=[str(workspace["pool"])], labeled=str(workspace["labeled"]), model=str(workspace["model"]),
                  output_dir=str(output_dir), target_size=60, num_clusters=4, batch_size=8,
                  image_size=IMAGE_SIZE, chunk_size=25)
    return SelectionArguments(**{**values, **overrides})


def read_output(output_dir: Path) -> tuple[list[dict], list[dict]]:
    """(selection rows in rank order, dataset rows in file order), with every column."""
    selection = pq.read_table(output_dir / "selection.parquet").to_pylist()
    files = sorted((output_dir / "dataset" / "data").glob("*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return selection, rows


# ---- entropy ----------------------------------------------------------------------------------------------
def test_foreground_entropy_matches_hand_computation():
    # One image, 3 classes, 2 pixels. Pixel 1: logits (0, ln 2, ln 3) -> p = (1/6, 2/6, 3/6).
    # Pixel 2: logits (0, 0, 0) -> p = 1/3 each. Background = class 0, left out of the sum only.
    logits = torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [math.log(3), 0.0]]).view(1, 3, 1, 2)
    pixel1 = -(2 / 6 * math.log(2 / 6) + 3 / 6 * math.log(3 / 6))
    pixel2 = -2 * (1 / 3 * math.log(1 / 3))
    assert foreground_entropy(logits, background_id=0).item() == pytest.approx((pixel1 + pixel2) / 2, rel=1e-6)
    full1 = pixel1 - 1 / 6 * math.log(1 / 6)
    full2 = -3 * (1 / 3 * math.log(1 / 3))
    assert foreground_entropy(logits, background_id=None).item() == pytest.approx((full1 + full2) / 2, rel=1e-6)
    # Excluding class 2 instead.
    other1 = -(1 / 6 * math.log(1 / 6) + 2 / 6 * math.log(2 / 6))
    assert foreground_entropy(logits, background_id=2).item() == pytest.approx((other1 + pixel2) / 2, rel=1e-6)


def test_foreground_entropy_saturated_and_invalid():
    logits = torch.tensor([[1000.0], [-1000.0]]).view(1, 2, 1, 1)  # p = (1, 0): no NaN from 0 * log 0
    assert foreground_entropy(logits, background_id=0).item() == 0.0
    with pytest.raises(ValueError, match="background_id"):
        foreground_entropy(torch.zeros(1, 3, 2, 2), background_id=3)
    with pytest.raises(ValueError, match="batch, classes, height, width"):
        foreground_entropy(torch.zeros(3, 2, 2))


def test_score_logits_labels_confidence_counts():
    logits = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    logits[1, :, 0, 0] = float("nan")
    scores = score_logits(logits, background_id=0)
    probs = logits.softmax(dim=1)
    assert torch.equal(scores.pseudo_labels[[0, 2]].long(), logits[[0, 2]].argmax(dim=1))
    assert scores.confidence[0].item() == pytest.approx(probs[0].max(dim=0).values.mean().item(), rel=1e-6)
    for i in (0, 2):
        expected = torch.bincount(logits[i].argmax(dim=0).flatten(), minlength=5)
        assert torch.equal(scores.class_counts[i], expected)
    assert scores.finite.tolist() == [True, False, True]


# ---- quotas and the quota walk ----------------------------------------------------------------------------
def test_largest_remainder_quotas_examples():
    # exact shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the one left over goes to the largest remainder (0.5)
    assert largest_remainder_quotas([5, 3, 2], 7).tolist() == [4, 2, 1]
    # equal remainders: lower cluster index first
    assert largest_remainder_quotas([1, 1, 1], 10).tolist() == [4, 3, 3]
    assert largest_remainder_quotas([0, 4], 3).tolist() == [0, 3]
    with pytest.raises(ValueError, match="sum to zero"):
        largest_remainder_quotas([0, 0], 5)


def test_largest_remainder_quotas_properties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.integers(0, 1000, rng.integers(1, 40))
        counts[0] += 1
        total = int(rng.integers(0, 10**6))
        quotas = largest_remainder_quotas(counts, total)
        exact = total * counts / counts.sum()
        assert quotas.sum() == total
        assert np.all(quotas >= np.floor(exact)) and np.all(quotas <= np.floor(exact) + 1)
        bumped = quotas > np.floor(exact + 1e-9)
        remainders = exact - np.floor(exact)
        if bumped.any() and (~bumped).any():
            assert remainders[bumped].min() >= remainders[~bumped].max() - 1e-9


def sequential_walk(order, clusters, quotas, top_up):
    """The walk exactly as the spec words it, one candidate at a time (the reference)."""
    taken = [0] * len(quotas)
    accepted, skipped = [], []
    for candidate in order:
        if len(accepted) == sum(quotas):
            break
        m = clusters[candidate]
        if taken[m] < quotas[m]:
            taken[m] += 1
            accepted.append(candidate)
        else:
            skipped.append(candidate)
    if top_up:
        rest = [c for c in order if c not in set(accepted)]
        extra = rest[: sum(quotas) - len(accepted)]
        return sorted(accepted + extra, key=list(order).index), set(extra)
    return accepted, set()


def test_quota_walk_matches_sequential_walk():
    rng = np.random.default_rng(1)
    for trial in range(40):
        n, m = int(rng.integers(1, 200)), int(rng.integers(1, 8))
        clusters = rng.integers(0, m, n)
        entropy = rng.random(n)
        order = entropy_order(entropy, [f"{i:05d}" for i in range(n)])
        quotas = largest_remainder_quotas(rng.integers(1, 20, m), int(rng.integers(1, n + 20)))
        for top_up in (False, True):
            result = quota_walk(order, clusters, quotas, top_up=top_up)
            expected, extra = sequential_walk(order.tolist(), clusters.tolist(), quotas.tolist(), top_up)
            assert result.selected.tolist() == expected, (trial, top_up)
            assert set(result.selected[result.top_up].tolist()) == extra
            assert np.all(np.bincount(clusters[result.selected[~result.top_up]], minlength=m) <= quotas)
            assert len(result.selected) + result.shortfall == quotas.sum()


def test_top_up_fills_shortfall_from_overflow_in_entropy_order():
    # cluster 1 has a single candidate but a quota of 3: two places are left for the overflow of cluster 0.
    entropy = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    clusters = np.array([0, 0, 1, 0, 0, 0, 0])
    ids = [f"x{i}" for i in range(7)]
    plain = select_by_quota(entropy, ids, clusters, labeled_counts=[1, 1], target_size=6)
    assert plain.selected.tolist() == [0, 1, 2, 3] and plain.shortfall == 2
    filled = select_by_quota(entropy, ids, clusters, labeled_counts=[1, 1], target_size=6, top_up=True)
    assert filled.selected.tolist() == [0, 1, 2, 3, 4, 5] and filled.shortfall == 0
    assert filled.top_up.tolist() == [False, False, False, False, True, True]
    assert filled.accepted.tolist() == [5, 1]


def test_entropy_order_breaks_ties_by_id_and_rejects_nan():
    order = entropy_order(np.array([0.5, 0.1, 0.5, 0.5]), ["c", "z", "a", "b"])
    assert order.tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match="Non-finite entropy"):
        entropy_order(np.array([0.1, np.nan]), ["a", "b"])


def test_fewer_candidates_than_target_takes_all(caplog):
    with caplog.at_level("WARNING"):
        result = select_by_quota(np.array([0.3, 0.1]), ["a", "b"], np.array([0, 1]), [5, 5], target_size=10)
    assert result.selected.tolist() == [1, 0] and result.shortfall == 8
    assert "all of them are selected" in caplog.text


# ---- k-means ----------------------------------------------------------------------------------------------
def test_spherical_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.normal(size=(64, 5)))[0].T  # 5 orthonormal directions
    truth = rng.integers(0, 5, 1000)
    features = directions[truth] + rng.normal(0, 0.05, (1000, 64))
    result = spherical_kmeans(features.astype(np.float16), 5, seed=3, chunk_size=128)
    labels = result.labels.numpy()
    # every found cluster is exactly one true cluster (a permutation)
    pairs = {(t, l) for t, l in zip(truth, labels)}
    assert len(pairs) == 5 and len({t for t, _ in pairs}) == 5 and len({l for _, l in pairs}) == 5
    assert result.converged and result.counts.sum() == 1000
    assert np.allclose(np.linalg.norm(result.centroids.numpy(), axis=1), 1.0, atol=1e-5)
    again = spherical_kmeans(features.astype(np.float16), 5, seed=3, chunk_size=1000)
    assert torch.equal(again.labels, result.labels) and torch.allclose(again.centroids, result.centroids)
    # chunked assignment of new points agrees with the fitted labels
    assigned, similarity = assign_to_prototypes(features.astype(np.float16), result.centroids, chunk_size=77)
    assert (assigned == labels).all() and similarity.min() > 0.8


def test_spherical_kmeans_bad_input():
    with pytest.raises(ValueError, match="num_clusters must be between"):
        spherical_kmeans(np.eye(3), 4)
    with pytest.raises(ValueError, match="distinct feature vectors"):
        spherical_kmeans(np.ones((10, 3)), 2)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        assign_to_prototypes(np.ones((2, 3)), torch.ones(2, 4))


def one_pass_assignment(features, centroids):
    """The assignment written the direct way: normalise all rows at once, one matmul, first maximum."""
    scores = torch.nn.functional.normalize(torch.as_tensor(features).float(), dim=1, eps=1e-12) @ centroids.T
    best, index = scores.max(dim=1)
    return index.numpy(), best.numpy()


def test_streamed_assignment_equals_one_pass_and_takes_block_iterables():
    rng = np.random.default_rng(7)
    centroids = torch.nn.functional.normalize(torch.randn(6, 48, generator=torch.Generator().manual_seed(7)))
    centroids = torch.cat([centroids, centroids[2:3], centroids[4:5]])  # exact ties: 6 == 2 and 7 == 4
    features = rng.normal(size=(1000, 48)).astype(np.float16)
    features[:20] = centroids[[2, 4] * 10].numpy()  # rows exactly on a duplicated prototype
    features[20] = 0.0  # an all-zero row: every similarity 0, ties to cluster 0
    expected, similarity = one_pass_assignment(features, centroids)
    assert expected[20] == 0 and set(expected[:20].tolist()) == {2, 4}
    blocks = [features[start:stop] for start, stop in [(0, 1), (1, 300), (300, 301), (301, 1000)]]
    for given, chunk_size in [(features, 8192), (features, 64), (features, 1), (iter(blocks), 100),
                              ((torch.from_numpy(b) for b in blocks), 7)]:
        labels, best = assign_to_prototypes(given, centroids, chunk_size=chunk_size)
        assert np.array_equal(labels, expected) and np.array_equal(best, similarity), chunk_size
    labels, best = assign_to_prototypes(iter([]), centroids)
    assert labels.shape == (0,) and best.shape == (0,)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        assign_to_prototypes(iter([features, np.ones((2, 3))]), centroids)


@pytest.mark.parametrize("levels", [None, 3, 50, 2000])
def test_entropy_order_equals_a_full_lexsort(levels):
    # None: continuous entropies (almost no ties); few levels: mostly ties (the full-sort branch); 2000: some.
    rng = np.random.default_rng(levels or 0)
    n = 5000
    entropy = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels
    ids = [f"pool/{i:06d}.jpg" for i in rng.permutation(n)]
    ids[10] = ids[11]  # equal ids too: index order decides, as in lexsort
    entropy[10] = entropy[11]
    expected = np.lexsort((np.asarray(ids, dtype=str), entropy))
    assert np.array_equal(entropy_order(entropy, ids), expected)
    assert np.array_equal(entropy_order(entropy, np.asarray(ids, dtype=object)), expected)


def test_quota_walk_with_more_clusters_than_int16_keys():
    rng = np.random.default_rng(3)
    num_clusters = 40_000
    clusters = rng.integers(num_clusters - 5, num_clusters, 300)  # ids above 32767 must not wrap around
    quotas = np.zeros(num_clusters, dtype=np.int64)
    quotas[-5:] = [3, 0, 10, 1, 50]
    order = entropy_order(rng.random(300), [f"{i:04d}" for i in range(300)])
    result = quota_walk(order, clusters, quotas)
    expected, _ = sequential_walk(order.tolist(), clusters.tolist(), quotas.tolist(), False)
    assert result.selected.tolist() == expected


# ---- pool readers -----------------------------------------------------------------------------------------
def test_folder_pool_ids_sources_chunks(tmp_path):
    root = make_pool_folder(tmp_path / "pool", num_images=15, corrupt=False)
    pool = open_pool([str(root)])
    assert len(pool) == 17  # 15 + 2 off-size images; notes.txt ignored
    assert pool.parts[0].ids()[:2] == ["millionaid/millionaid_00000.jpg", "millionaid/millionaid_00003.jpg"]
    chunks = pool.chunks(4)
    assert [c.size for c in chunks] == [4, 4, 4, 4, 1]
    images = [raw for c in chunks for raw in pool.read_chunk(c)]
    assert [r.source for r in images] == ["millionaid"] * 6 + ["samrs"] * 5 + ["star"] * 6
    assert images[0].data == (root / "millionaid" / "millionaid_00000.jpg").read_bytes()
    tagged = open_pool([f"mid={root / 'millionaid'}"])
    assert tagged.parts[0].ids()[0] == "mid/millionaid_00000.jpg"
    assert next(tagged.read_chunk(tagged.chunks(2)[0])).source == "mid"
    (root / "loose.png").write_bytes(encode(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="not inside a source subfolder"):
        open_pool([str(root)])
    with pytest.raises(ValueError, match="Duplicate image id"):
        open_pool([f"a={root / 'star'}", f"a={root / 'star'}"])


def test_parquet_and_dataset_pools_read_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [encode(random_image(rng)) for _ in range(7)]
    features = datasets.Features({"image": datasets.Image(), "source": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "source": ["a", "b"] * 3 + ["a"]}, features=features)
    dataset.to_parquet(str(tmp_path / "shard.parquet"), batch_size=3)
    for pool in (open_pool([str(tmp_path / "shard.parquet")]), open_pool([dataset])):
        chunks = pool.chunks(3)
        assert [c.size for c in chunks] == [3, 3, 1]
        images = [raw for c in chunks for raw in pool.read_chunk(c)]
        assert [r.data for r in images] == blobs and [r.source for r in images][:2] == ["a", "b"]
    assert open_pool([str(tmp_path / "shard.parquet")]).parts[0].ids()[3] == "shard/3"
    with pytest.raises(ValueError, match="no 'source' column"):
        open_pool([dataset.remove_columns("source")])


# ---- scoring ----------------------------------------------------------------------------------------------
def test_chunk_scorer_keeps_one_row_per_image_and_records_failures():
    model = tiny_model()
    forward = model.forward

    def first_image_nan(pixel_values, **kwargs):  # the model breaks on the first image of each batch
        output = forward(pixel_values, **kwargs)
        output.logits[0] = float("nan")
        return output

    model.forward = first_image_nan
    rng = np.random.default_rng(0)
    good = [encode(random_image(rng)) for _ in range(3)]
    images = [RawImage("a", "s1", good[0]), RawImage("b", "s1", None, "unreadable file: gone"),
              RawImage("c", "s2", b"garbage"), RawImage("d", "s2", good[1]), RawImage("e", "s2", good[2])]
    table = ChunkScorer(model, ScoringOptions(image_size=IMAGE_SIZE, batch_size=8)).score(images).to_pylist()
    assert [r["id"] for r in table] == ["a", "b", "c", "d", "e"]
    assert "NaN" in table[0]["error"] and table[1]["error"] == "unreadable file: gone"
    assert table[2]["error"].startswith("cannot decode image: UnidentifiedImageError")
    assert "0x" not in table[2]["error"]  # reproducible reasons: no memory addresses
    for row in table[:3]:
        assert row["entropy"] is None and row["feature"] is None and row["pseudo_label"] is None
    for row in table[3:]:
        assert row["error"] is None and len(row["feature"]) == 32 and sum(row["class_counts"]) == IMAGE_SIZE**2
        assert np.asarray(Image.open(io.BytesIO(row["pseudo_label"]))).shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert np.linalg.norm(np.asarray(row["feature"], dtype=np.float32)) == pytest.approx(1.0, abs=1e-2)


# ---- whole runs -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(workspace):
    """One uninterrupted single-process run that the other runs are compared with."""
    output_dir = workspace["root"] / "reference"
    outcome = run_selection(arguments(workspace, output_dir))
    return output_dir, outcome


def test_run_selects_scores_and_reports(workspace, reference_run, tmp_path):
    output_dir, outcome = reference_run
    assert outcome.complete and outcome.chunks_scored == outcome.chunks_total == 10  # 8 pool + 2 labeled chunks
    selection, rows = read_output(output_dir)
    stats = outcome.stats
    assert len(selection) == len(rows) == stats.num_selected == 60
    # ranking: ascending entropy along the rank; quotas never exceeded
    entropies = [r["entropy"] for r in selection]
    assert entropies == sorted(entropies) and [r["rank"] for r in selection] == list(range(60))
    for cluster in stats.quota_table:
        assert cluster["accepted"] <= cluster["quota"]
    assert sum(c["quota"] for c in stats.quota_table) == 60
    # the two corrupt files, the images that are not 8-bit RGB and the constant one are reported with their
    # reason, counted and listed, never scored (read as 8 bits, they would be dark and win the ranking)
    lines = (output_dir / "dataset" / "failures.jsonl").read_text().splitlines()
    failures = {f["id"]: f for f in map(json.loads, lines)}
    assert sorted(failures) == sorted(["samrs/broken.png", "samrs/truncated.jpg", *UNUSABLE])
    assert failures["samrs/broken.png"]["reason"].startswith("cannot decode image: UnidentifiedImageError")
    for image_id, reason in UNUSABLE.items():
        assert failures[image_id]["reason"].startswith(reason), failures[image_id]
        assert failures[image_id]["source"] == image_id.split("/")[0]
    on_disk = {s: sum(1 for f in (workspace["pool"] / s).iterdir() if f.suffix != ".txt") for s in SOURCES}
    failed = {s: sum(f["source"] == s for f in failures.values()) for s in SOURCES}
    assert failed == {"millionaid": 1, "samrs": 2, "star": 5}
    for source in SOURCES:
        assert stats.per_source[source] == {"scored": on_disk[source] - failed[source], "failed": failed[source],
                                            "selected": sum(r["source"] == source for r in rows)}
    assert stats.num_scored == sum(on_disk.values()) - 8 and stats.num_failed == 8
    card = (output_dir / "dataset" / "README.md").read_text()
    assert f"| samrs | {on_disk['samrs'] - 2} | 2 | {stats.per_source['samrs']['selected']} |" in card
    assert "entropy_histogram.png" in card and "quota B_m" in card and "failures.jsonl" in card
    assert Image.open(output_dir / "dataset" / "entropy_histogram.png").size == (900, 420)
    assert sum(stats.class_share.values()) == pytest.approx(1.0)

    # the dataset loads with `datasets`; masks are the model's argmax and entropies its foreground entropy
    loaded = datasets.load_dataset(str(output_dir / "dataset"), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == 60 and set(loaded.column_names) >= {"image", "mask", "id", "source", "entropy", "rank"}
    model = tiny_model()
    for row in (loaded[0], loaded[len(loaded) - 1]):
        pixels = torch.from_numpy(np.array(row["image"].convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            logits = model(pixels).logits
        assert np.array_equal(np.asarray(row["mask"]), logits[0].argmax(dim=0).numpy())
        assert row["entropy"] == pytest.approx(foreground_entropy(logits, 0).item(), rel=1e-5)
    # off-size originals (48 px) are stored resized, so image and mask always align
    assert all(Image.open(io.BytesIO(r["image"]["bytes"])).size == (IMAGE_SIZE, IMAGE_SIZE) for r in rows)


def test_killed_run_resumes_to_the_same_output(workspace, reference_run, tmp_path):
    output_dir = tmp_path / "resumed"
    first = run_selection(arguments(workspace, output_dir, max_chunks=3))
    assert not first.complete and first.chunks_scored == 3 and first.missing_chunks == 7
    assert not (output_dir / "dataset").exists()
    # a run killed while writing leaves a temporary file behind; it is cleaned up, never read
    temporary_sibling(output_dir / "scores" / "pool" / "chunk-000007.parquet").write_bytes(b"partial")
    second = run_selection(arguments(workspace, output_dir))
    assert second.complete and second.chunks_reused == 3 and second.chunks_scored == 7
    assert json.loads((output_dir / "run_stats.json").read_text())["chunks_scored"] == 7
    assert not list((output_dir / "scores" / "pool").glob(".*tmp*"))
    assert read_output(output_dir) == read_output(reference_run[0])
    # a third run re-scores nothing and writes the same dataset again
    third = run_selection(arguments(workspace, output_dir))
    assert third.chunks_scored == 0 and read_output(output_dir) == read_output(reference_run[0])


def test_failed_rewrite_keeps_the_previous_outputs(workspace, reference_run, tmp_path, monkeypatch):
    """A run that dies while writing selection.parquet (here: the disk fills up) leaves the previous
    selection and dataset as they were, and no temporary files."""
    output_dir = tmp_path / "again"
    shutil.copytree(reference_run[0], output_dir)
    before = {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}

    def disk_full(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1" + bytes(16))  # what a writer leaves when it stops half-way
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_selection(arguments(workspace, output_dir))
    after = {p.relative_to(output_dir).as_posix(): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before if name not in ("run_stats.json", "run_config.json"))


@pytest.mark.slow
def test_sigkilled_runs_resume_to_the_same_output(workspace, reference_run, tmp_path):
    """Real kills (SIGKILL, no clean-up): one while a score shard is half written, the resumed run while the
    output dataset is half written; the next run scores nothing again and writes the reference output."""
    output_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    args = json.dumps(asdict(arguments(workspace, output_dir)))
    pool_scores = output_dir / "scores" / "pool"

    def run_until_killed(stage: str, after: int) -> None:
        result = subprocess.run([sys.executable, "-c", KILLER, stage, str(after), args], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]

    run_until_killed("scoring", 4)  # 2 labeled + 2 pool shards written, the 5th half written
    assert len(list(pool_scores.glob("chunk-*.parquet"))) == 2 and len(list(pool_scores.glob(".chunk-*.tmp"))) == 1
    run_until_killed("export", 30)  # resumes, scores the other 6 chunks, dies half-way through the dataset
    assert json.loads((output_dir / "run_stats.json").read_text())["chunks_reused"] == 4
    assert len(list(output_dir.glob(".dataset.*.partial"))) == 1 and not (output_dir / "dataset").exists()
    outcome = run_selection(arguments(workspace, output_dir))
    assert outcome.complete and outcome.chunks_scored == 0 and outcome.chunks_reused == 10
    assert read_output(output_dir) == read_output(reference_run[0])
    assert not list(output_dir.rglob("*.partial")) and not list(output_dir.rglob("*.tmp*"))
    for name in ("failures.jsonl", "README.md", "selection_stats.json"):
        assert (output_dir / "dataset" / name).read_text() == (reference_run[0] / "dataset" / name).read_text()


def test_mixed_thread_counts_are_recorded_and_keep_the_selection(workspace, reference_run, tmp_path, caplog):
    """Shards scored with 1 and with 2 intra-op threads differ in the last bits: the run warns, the card
    records both environments, and the selected ids stay those of the reference run."""
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("needs 2 intra-op threads")
    output_dir = tmp_path / "mixed"
    torch.set_num_threads(1)
    try:
        run_selection(arguments(workspace, output_dir, max_chunks=5))
    finally:
        torch.set_num_threads(threads)
    with caplog.at_level("WARNING"):
        outcome = run_selection(arguments(workspace, output_dir))
    assert "2 different numeric environments" in caplog.text
    recorded = outcome.stats.parameters["scoring_environment"]
    assert "intra-op threads: 1, float32 (5 shards)" in recorded
    assert f"intra-op threads: {threads}, float32 (5 shards)" in recorded
    selection, reference = read_output(output_dir)[0], read_output(reference_run[0])[0]
    assert [r["id"] for r in selection] == [r["id"] for r in reference]
    assert [r["entropy"] for r in selection] == pytest.approx([r["entropy"] for r in reference], rel=1e-6)


def test_bad_pool_inputs_are_clear_errors(workspace, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"(?s)Pool input 0.*missing does not exist.*Expected an image folder"):
        open_pool([str(tmp_path / "missing")])
    with pytest.raises(FileNotFoundError, match="elsewhere does not exist"):
        open_pool([f"star={tmp_path / 'elsewhere'}"])

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="neither an existing local file or folder nor.*ConnectionError: no network"):
        open_pool(["someone/unknown-pool"])
    (tmp_path / "empty" / "millionaid").mkdir(parents=True)
    (tmp_path / "empty" / "millionaid" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"The pool holds no images .*empty.*PATH/<source>"):
        run_selection(arguments(workspace, tmp_path / "run", pool=[str(tmp_path / "empty")]))


def test_bf16_without_native_support_falls_back_before_scoring(workspace, tmp_path, monkeypatch):
    """RS4P --dtype bfloat16 on a CPU without AVX-512 BF16/AMX (where it runs ~500x slower) warns with the
    measured factor and scores in float32; the check comes first, before anything is read or written."""
    from s5_hf import precision

    monkeypatch.setattr(precision, "cpu_features", lambda: {"avx2", "fma"})
    (tmp_path / "empty" / "millionaid").mkdir(parents=True)
    with pytest.warns(precision.PrecisionWarning, match="(?i)float32"):
        with pytest.raises(ValueError, match="The pool holds no images"):
            run_selection(arguments(workspace, tmp_path / "run", pool=[str(tmp_path / "empty")], dtype="bfloat16"))


def test_push_to_hub_twice_then_load_dataset_streaming(workspace, reference_run, tmp_path, hub):
    """--push_to_hub uploads the dataset folder; pushed again with another shard count, the repo holds only the
    second push's shards and `load_dataset("s5/...", streaming=True)` reads every selected row once."""
    from huggingface_hub import HfApi

    output_dir = tmp_path / "pushed"
    shutil.copytree(reference_run[0] / "scores", output_dir / "scores")  # merge and export only
    for name in ("run_config.json", ".s5-manifest.json"):
        shutil.copy(reference_run[0] / name, output_dir / name)
    outcome = run_selection(arguments(workspace, output_dir, push_to_hub=True, hub_model_id="s5/rs4p-tiny"))
    assert outcome.chunks_scored == 0
    first = {f for f in HfApi().list_repo_files("s5/rs4p-tiny", repo_type="dataset") if f.endswith(".parquet")}
    assert first == {"data/train-00000-of-00001.parquet"}
    run_selection(arguments(workspace, output_dir, push_to_hub=True, hub_model_id="s5/rs4p-tiny", min_shards=3))
    files = set(HfApi().list_repo_files("s5/rs4p-tiny", repo_type="dataset"))
    rows = list(datasets.load_dataset("s5/rs4p-tiny", split="train", streaming=True))
    assert {f for f in files if f.endswith(".parquet")} == {f"data/train-{i:05d}-of-00003.parquet" for i in range(3)}
    _, expected = read_output(reference_run[0])
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in expected) and len(rows) == 60
    assert rows[0]["mask"].mode == "L" and rows[0]["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert {"README.md", "entropy_histogram.png", "failures.jsonl", "selection_stats.json"} <= files


@pytest.mark.slow
def test_parquet_pool_selects_like_the_folder_pool(workspace, reference_run, tmp_path):
    """The same images, ids and sources as one Parquet file (small row groups) give the same selection."""
    pool = open_pool([str(workspace["pool"])])
    raws = [raw for chunk in pool.chunks(100) for raw in pool.read_chunk(chunk)]
    features = datasets.Features({"image": datasets.Image(), "source": datasets.Value("string"),
                                  "id": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [{"bytes": r.data, "path": None} for r in raws],
                                        "source": [r.source for r in raws], "id": [r.id for r in raws]},
                                       features=features)
    table.to_parquet(str(tmp_path / "pool.parquet"), batch_size=7)
    output_dir = tmp_path / "from_parquet"
    run_selection(arguments(workspace, output_dir, pool=[str(tmp_path / "pool.parquet")]))
    assert read_output(output_dir) == read_output(reference_run[0])


def test_resume_refuses_scores_made_differently(workspace, reference_run, tmp_path):
    output_dir = tmp_path / "changed"
    run_selection(arguments(workspace, output_dir, max_chunks=1))
    with pytest.raises(ValueError, match="image_size: 64 -> 32"):
        run_selection(arguments(workspace, output_dir, image_size=32))
    # --no_resume starts over instead
    outcome = run_selection(arguments(workspace, output_dir, image_size=32, resume=False, max_chunks=1))
    assert outcome.chunks_reused == 0 and outcome.chunks_scored == 1
    (output_dir / "run_config.json").unlink()
    with pytest.raises(ValueError, match="no run_config.json"):
        run_selection(arguments(workspace, output_dir, image_size=32))


@pytest.mark.slow
def test_two_processes_select_exactly_like_one(workspace, reference_run, tmp_path):
    """torchrun with 2 CPU processes: the work is split, and the output equals the single-process run."""
    output_dir = tmp_path / "torchrun"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), "--pool", str(workspace["pool"]), "--labeled", str(workspace["labeled"]),
               "--model", str(workspace["model"]), "--output_dir", str(output_dir), "--target_size", "60",
               "--num_clusters", "4", "--batch_size", "8", "--image_size", str(IMAGE_SIZE), "--chunk_size", "25"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "process 0 scored 5 chunks" in log and "process 1 scored 5 chunks" in log, log[-3000:]
    assert read_output(output_dir) == read_output(reference_run[0])
    for name in ("failures.jsonl", "README.md", "selection_stats.json"):
        assert (output_dir / "dataset" / name).read_text() == (reference_run[0] / "dataset" / name).read_text()
