"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) of a query×gallery distance matrix.

Each item's k-reciprocal neighbourhood (expanded by the neighbourhoods of its members when they
mostly agree) becomes a Gaussian-weighted vector; the Jaccard distance between these vectors,
averaged over the k2 nearest neighbours (local query expansion), is blended with the original.
"""

from __future__ import annotations

import numpy as np


def k_reciprocal_rerank(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked (num_q, num_g) distances: (1 − λ)·Jaccard + λ·original (squared, normalised).

    q_g (num_q, num_g), q_q (num_q, num_q), g_g (num_g, num_g): distances, smaller is closer.
    """
    q_g, q_q, g_g = (np.asarray(d, dtype=np.float32) for d in (q_g, q_q, g_g))
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ValueError(
            f"q_q, g_g: expected shapes ({num_q}, {num_q}) and ({num_g}, {num_g}), got {q_q.shape}, {g_g.shape}"
        )
    for name, k in (("k1", k1), ("k2", k2)):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"{name}: expected a positive int, got {k!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value: expected a value in [0, 1], got {lambda_value!r}")
    n = num_q + num_g
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2
    dist = dist / np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    rank = np.argsort(dist, axis=1, kind="stable")

    k1 = min(k1, n - 1)
    half = max(int(round(k1 / 2)), 1)
    weights = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = _k_reciprocal(rank, i, k1)
        expanded = members
        for candidate in members:
            near = _k_reciprocal(rank, candidate, half)
            if len(np.intersect1d(near, members)) > 2.0 / 3.0 * len(near):
                expanded = np.union1d(expanded, near)
        w = np.exp(-dist[i, expanded])
        weights[i, expanded] = w / w.sum()

    if k2 > 1:
        expanded_weights = np.empty_like(weights)
        for i in range(n):
            expanded_weights[i] = weights[rank[i, : min(k2, n)]].mean(axis=0)
        weights = expanded_weights

    # Σ_k min(v_i, v_j) through an inverted index over the (sparse) gallery vectors.
    gallery_weights = weights[num_q:]
    holders = [np.flatnonzero(gallery_weights[:, k]) for k in range(n)]
    jaccard = np.empty((num_q, num_g), dtype=np.float32)
    for i in range(num_q):
        shared = np.zeros(num_g, dtype=np.float32)
        for k in np.flatnonzero(weights[i]):
            rows = holders[k]
            shared[rows] += np.minimum(weights[i, k], gallery_weights[rows, k])
        jaccard[i] = 1.0 - shared / (2.0 - shared)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]


def _k_reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items among i's k+1 nearest that also hold i among their own k+1 nearest."""
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]
