"""Low-entropy ranking and the cluster-quota walk of the paper's RS4P-1M selection, vectorised with numpy (O(N log N))."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def largest_remainder_quotas(counts: Sequence[int] | np.ndarray, total: int) -> np.ndarray:
    """Split `total` over clusters in proportion to `counts` (B_m = B * N_m / N), summing to `total` exactly.

    Every cluster gets the floor of its exact share; the units left over go one each to the clusters with
    the largest fractional remainders, ties to the lower cluster index. Integer arithmetic throughout, so
    there is no floating-point rounding at 10^6 scale.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-d sequence, got shape {counts.shape}.")
    if (counts < 0).any():
        raise ValueError(f"counts must be non-negative, got {counts.tolist()}.")
    if total < 0:
        raise ValueError(f"total must be non-negative, got {total}.")
    population = int(counts.sum())
    if population == 0:
        raise ValueError("counts sum to zero: there is nothing to divide the quotas by.")
    # Python ints: B * N_m overflows int64 only for absurd sizes, but they cost nothing here.
    shares = [total * int(n) for n in counts]
    quotas = np.array([s // population for s in shares], dtype=np.int64)
    remainders = np.array([s % population for s in shares], dtype=np.int64)
    leftover = total - int(quotas.sum())
    # Largest remainder first; lexsort's last key is primary, the index breaks ties.
    by_remainder = np.lexsort((np.arange(len(counts)), -remainders))
    quotas[by_remainder[:leftover]] += 1
    return quotas


def entropy_order(entropy: np.ndarray, ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Indices sorting candidates by ascending entropy, equal entropies by id (so the order is reproducible).

    The same order as `np.lexsort((ids, entropy))`, but the ids are compared only inside runs of equal
    entropy: one float sort of all N, then a string sort of the tied candidates alone. (Sorting 10^7 ids as
    strings costs more than the rest of the diversity step and an `(N,)` fixed-width string array.)
    """
    entropy = np.asarray(entropy, dtype=np.float64)
    ids = ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=object)
    if entropy.shape != ids.shape or entropy.ndim != 1:
        raise ValueError(f"entropy {entropy.shape} and ids {ids.shape} must be 1-d and of the same length.")
    if not np.isfinite(entropy).all():
        bad = ids[~np.isfinite(entropy)][:5].tolist()
        raise ValueError(f"Non-finite entropy for candidates {bad}: report them as failures before ranking.")
    order = np.argsort(entropy, kind="stable")
    ranked = entropy[order]
    tied_with_next = ranked[1:] == ranked[:-1]
    if 2 * int(tied_with_next.sum()) > len(order):
        # Mostly ties (e.g. quantised entropies): one string sort of everything is cheaper than picking runs.
        return np.lexsort((np.asarray(ids, dtype=str), entropy))
    if tied_with_next.any():
        tied = np.zeros(len(order), dtype=bool)  # positions in `order` inside a run of equal entropies
        tied[1:] |= tied_with_next
        tied[:-1] |= tied_with_next
        positions = np.flatnonzero(tied)
        members = order[positions]  # runs are contiguous, so re-sorting them in place keeps the runs apart
        resorted = np.lexsort((np.asarray(ids[members], dtype=str), entropy[members]))
        order[positions] = members[resorted]
    return order


@dataclass
class QuotaSelection:
    """Outcome of the quota walk.

    Attributes:
        selected: candidate indices in walk (ascending-entropy) order.
        top_up: bool per entry of `selected`, True where it filled a shortfall instead of its cluster's quota.
        quotas: `(M,)` B_m per cluster.
        available: `(M,)` candidates per cluster.
        accepted: `(M,)` selected per cluster (quota acceptances plus top-ups).
        shortfall: B minus the number selected (clusters with fewer candidates than quota, no top-up).
    """

    selected: np.ndarray
    top_up: np.ndarray
    quotas: np.ndarray
    available: np.ndarray
    accepted: np.ndarray
    shortfall: int


def quota_walk(
    order: np.ndarray, clusters: np.ndarray, quotas: np.ndarray, top_up: bool = False
) -> QuotaSelection:
    """Walk candidates in `order`, accepting one while its cluster has accepted fewer than its quota.

    Equivalent to the paper's sequential walk (stop at B = quotas.sum()): a candidate is accepted
    exactly when fewer than `quotas[m]` earlier candidates of its cluster m exist, which is its rank within
    the cluster along the walk. With `top_up`, the places left by clusters that ran short go to the skipped
    (overflow) candidates, in walk order.

    Args:
        order: candidate indices, best first (see `entropy_order`).
        clusters: `(N,)` cluster id of every candidate.
        quotas: `(M,)` non-negative quota per cluster.
    """
    order = np.asarray(order, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    quotas = np.asarray(quotas, dtype=np.int64)
    num_clusters = len(quotas)
    if clusters.size and (clusters.min() < 0 or clusters.max() >= num_clusters):
        raise ValueError(f"cluster ids must be in [0, {num_clusters}), got range [{clusters.min()}, {clusters.max()}].")
    walk_clusters = clusters[order]
    # Rank of each walked candidate within its cluster: group by cluster (a stable sort keeps walk order;
    # small integer keys get numpy's radix sort), then subtract each group's start position.
    keys = walk_clusters.astype(np.int16) if num_clusters <= np.iinfo(np.int16).max else walk_clusters
    grouping = np.argsort(keys, kind="stable")
    group_start = np.concatenate(([0], np.cumsum(np.bincount(walk_clusters, minlength=num_clusters))[:-1]))
    rank_in_cluster = np.empty(len(order), dtype=np.int64)
    rank_in_cluster[grouping] = np.arange(len(order)) - group_start[walk_clusters[grouping]]
    accept = rank_in_cluster < quotas[walk_clusters]
    target = int(quotas.sum())
    shortfall = target - int(accept.sum())
    filled = np.zeros(len(order), dtype=bool)
    if top_up and shortfall > 0:
        overflow = np.flatnonzero(~accept)[:shortfall]
        filled[overflow] = True
        shortfall -= len(overflow)
    keep = np.flatnonzero(accept | filled)
    selected = order[keep]
    return QuotaSelection(
        selected=selected,
        top_up=filled[keep],
        quotas=quotas,
        available=np.bincount(clusters, minlength=num_clusters),
        accepted=np.bincount(clusters[selected], minlength=num_clusters),
        shortfall=shortfall,
    )


def select_by_quota(
    entropy: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    clusters: np.ndarray,
    labeled_counts: Sequence[int] | np.ndarray,
    target_size: int,
    top_up: bool = False,
) -> QuotaSelection:
    """Spec 4.3-4.4 end to end: rank by ascending entropy, then fill per-cluster quotas proportional to the
    labeled cluster sizes. With fewer candidates than `target_size`, every candidate is taken (logged)."""
    order = entropy_order(entropy, ids)
    if len(order) <= target_size:
        logger.warning(
            "The pool has %d scored candidates, not more than the target size %d: all of them are selected "
            "(no quotas applied).",
            len(order), target_size,
        )
        num_clusters = len(labeled_counts)
        quotas = largest_remainder_quotas(labeled_counts, target_size)
        clusters = np.asarray(clusters, dtype=np.int64)
        return QuotaSelection(
            selected=order,
            top_up=np.zeros(len(order), dtype=bool),
            quotas=quotas,
            available=np.bincount(clusters, minlength=num_clusters),
            accepted=np.bincount(clusters, minlength=num_clusters),
            shortfall=target_size - len(order),
        )
    return quota_walk(order, clusters, largest_remainder_quotas(labeled_counts, target_size), top_up=top_up)


__all__ = ["QuotaSelection", "entropy_order", "largest_remainder_quotas", "quota_walk", "select_by_quota"]
