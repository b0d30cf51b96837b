"""RS4P pool readers (rs4p/pool.py): image folders, Parquet files and datasets; ids, sources, chunks, and clear
errors for bad pool inputs."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from s5_hf.rs4p import open_pool, run_selection


def test_folder_pool_ids_sources_chunks(encode_image, make_pool_folder, tmp_path):
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
    (root / "loose.png").write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="not inside a source subfolder"):
        open_pool([str(root)])
    with pytest.raises(ValueError, match="Duplicate image id"):
        open_pool([f"a={root / 'star'}", f"a={root / 'star'}"])


def test_parquet_and_dataset_pools_read_the_same_images(encode_image, random_image, tmp_path):
    rng = np.random.default_rng(0)
    blobs = [encode_image(random_image(rng)) for _ in range(7)]
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


def test_bad_pool_inputs_are_clear_errors(selection_arguments, tmp_path, monkeypatch):
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
        run_selection(selection_arguments(tmp_path / "run", pool=[str(tmp_path / "empty")]))
