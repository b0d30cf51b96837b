"""Per-process data streams (s5_hf/data/streams.py): no sample twice, none missed, resumable; data sources and
their splits."""

from __future__ import annotations

import datasets
import pytest
import torch

from s5_hf.data.streams import TrainStream, process_part


def ids_of(row, generator):
    # The generator is the per-sample one: its first draw identifies (seed, epoch, id).
    return row["id"], float(torch.rand((), generator=generator))


def rows(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"id": [f"s{i:03d}" for i in range(n)]})


@pytest.mark.parametrize("num_shards", [3, 4])  # 3: rows split one by one across ranks; 4: whole shards
def test_processes_read_disjoint_parts_that_cover_the_data(num_shards):
    data = rows(24).to_iterable_dataset(num_shards=num_shards)
    seen = []
    for rank in range(2):
        stream = TrainStream(process_part(data, rank, 2), ids_of, batch_size=2, seed=0, shuffle_buffer=8)
        seen += [i for _ in range(6) for i in next(stream)[0]]  # 6 batches of 2 = one epoch of a 12-row part
    assert sorted(seen) == [f"s{i:03d}" for i in range(24)]


def test_epochs_reshuffle_and_a_restored_stream_continues_identically():
    data = rows(10).to_iterable_dataset(num_shards=2)
    stream = TrainStream(data, ids_of, batch_size=4, seed=3, shuffle_buffer=10)
    first = [next(stream) for _ in range(5)]  # 2 full batches per epoch (the last 2 rows are dropped)
    assert stream.state_dict() == {"epoch": 2, "batches_in_epoch": 1}
    assert list(first[0][0]) != list(first[2][0])  # epoch 1 is another order
    assert not torch.equal(first[0][1], first[2][1])  # and other augmentation draws

    resumed = TrainStream(data, ids_of, batch_size=4, seed=3, shuffle_buffer=10)
    resumed.load_state_dict({"epoch": 1, "batches_in_epoch": 1})
    for expected in first[3:]:
        got = next(resumed)
        assert list(got[0]) == list(expected[0]) and torch.equal(got[1], expected[1])


def test_augmentation_depends_on_the_sample_not_on_the_process_count():
    data = rows(8).to_iterable_dataset(num_shards=2)
    one = TrainStream(data, ids_of, batch_size=8, seed=1, shuffle_buffer=0)
    draws = dict(zip(*next(one)))
    for rank in range(2):
        part = TrainStream(process_part(data, rank, 2), ids_of, batch_size=4, seed=1, shuffle_buffer=0)
        ids, values = next(part)
        assert all(draws[i] == float(v) for i, v in zip(ids, values))


# ---- model selection never sees the reported test split (issue 10) ----------------------------------------------
def test_isprs_selects_on_held_out_training_tiles_and_reports_test(tmp_path):
    from s5_hf.data import load_benchmark
    from s5_hf.data.registry import BENCHMARKS, heldout_ids, stage_splits
    from s5_hf.data.streams import DataSource
    from s5_hf.data.synthetic import make_fake_vaihingen

    root = make_fake_vaihingen(tmp_path / "vaihingen")
    source = DataSource.parse(f"vaihingen={root}")
    assert source.default_splits() == ("train_minus_heldout", "heldout", "test")
    # Benchmarks with a validation split select on it and report it (as the paper); one source of truth: the readers.
    assert stage_splits("loveda") == ("train", "val", BENCHMARKS["loveda"].eval_split)

    def tiles(split, **options):
        return {row["id"].split("_y")[0] for row in load_benchmark("vaihingen", root, split, streaming=True,
                                                                   patch_size=64, **options)}

    train, heldout, rest, test = tiles("train"), tiles("heldout"), tiles("train_minus_heldout"), tiles("test")
    assert len(train) == 16 and len(heldout) == 2  # 1/8 of the 16 training areas
    assert heldout | rest == train and not heldout & rest and not heldout & test
    assert heldout == heldout_ids(sorted(train))  # a fixed function of the tile names: every process agrees
    assert len(tiles("heldout", heldout_fraction=0.25)) == 4
    with pytest.raises(ValueError, match="between 0 and 1"):
        heldout_ids(sorted(train), fraction=1.0)
    # Parquet or Hub sources have no tiles to hold out: the error says to name a split.
    shards = DataSource("vaihingen", "org/vaihingen-shards")
    with pytest.raises(ValueError, match="benchmark layouts only; name a split"):
        shards.load("heldout")
