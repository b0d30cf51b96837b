"""RS4P spherical k-means and the chunked assignment to its prototypes (rs4p/kmeans.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s5_hf.rs4p import assign_to_prototypes, spherical_kmeans


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
