"""RS4P selection (rs4p/selection.py): largest-remainder quotas, the entropy order and the quota walk."""

from __future__ import annotations

import numpy as np
import pytest

from s5_hf.rs4p import entropy_order, largest_remainder_quotas, quota_walk, select_by_quota


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
    """The quota walk the plain way, one candidate at a time (the reference)."""
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
