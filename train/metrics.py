"""Re-ID ranking metrics with torchreid's protocol: CMC, mAP and mINP from a query×gallery distance matrix.

For each query, gallery items with the same identity *and* the same camera are removed (they are
too easy); queries left with no true match are skipped and counted. Ties in distance keep the
gallery order (a stable sort), so results are reproducible.
"""

from __future__ import annotations

import numpy as np


def evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
) -> dict:
    """{"mAP", "mINP", "cmc" (list, rank-1 first), "num_valid_queries", "num_skipped_queries"}.

    distmat: (num_q, num_g), smaller is closer. The CMC curve has min(max_rank, num_g) entries.
    Raises ValueError when shapes disagree or no query has a match.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (num_q, num_g) array, got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    for name, arr, n in (
        ("q_pids", q_pids, num_q),
        ("q_camids", q_camids, num_q),
        ("g_pids", g_pids, num_g),
        ("g_camids", g_camids, num_g),
    ):
        if arr.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},) to match distmat, got {arr.shape}")
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank: expected a positive int, got {max_rank!r}")
    max_rank = min(max_rank, num_g)

    order = np.argsort(distmat, axis=1, kind="stable")
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for i in range(num_q):
        ranked = order[i]
        keep = ~((g_pids[ranked] == q_pids[i]) & (g_camids[ranked] == q_camids[i]))
        hits = (g_pids[ranked][keep] == q_pids[i]).astype(np.float64)
        if not hits.any():
            continue
        first = int(np.argmax(hits))
        if first < max_rank:
            cmc_sum[first:] += 1.0
        cum_hits = np.cumsum(hits)
        positions = np.flatnonzero(hits)
        aps.append(float(np.mean(cum_hits[positions] / (positions + 1.0))))
        inps.append(float(cum_hits[positions[-1]] / (positions[-1] + 1.0)))
    valid = len(aps)
    if valid == 0:
        raise ValueError("q_pids: no query has a match in the gallery (after same-camera removal)")
    return {
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "cmc": (cmc_sum / valid).tolist(),
        "num_valid_queries": valid,
        "num_skipped_queries": num_q - valid,
    }
