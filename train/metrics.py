"""Re-ID ranking metrics: CMC, mAP and mINP from a query×gallery distance matrix.

For each query, gallery items with the same identity *and* the same camera are removed (they are
too easy); queries left with no true match are skipped and counted. Ties in distance keep the
gallery order (a stable sort), so results are reproducible. The protocol picks the average
precision (docs/evaluation.md): "torchreid" takes the mean of the precisions at the true matches,
"official" the trapezoid rule over the precision–recall curve from (recall 0, precision 1), as
MARS's evaluation code (compute_AP.m) does. CMC and mINP are the same under both.
"""

from __future__ import annotations

import numpy as np


def average_precision_torchreid(ranks: np.ndarray) -> float:
    """Mean over the true matches of the precision at each: (1/G) Σₖ k / iₖ, iₖ the 1-based rank of the k-th."""
    k = np.arange(1, len(ranks) + 1)
    return float(np.mean(k / ranks))


def average_precision_mars(ranks: np.ndarray) -> float:
    """Trapezoid rule over recall: (1/G) Σₖ ½ (k / iₖ + (k − 1) / (iₖ − 1)), the second term 1 when iₖ = 1.

    Recall steps by 1/G at each true match; between ranks iₖ − 1 and iₖ the precision goes from
    (k − 1)/(iₖ − 1) to k/iₖ, and the curve starts at precision 1 before the first rank.
    """
    k = np.arange(1, len(ranks) + 1)
    before = np.where(ranks > 1, (k - 1) / np.maximum(ranks - 1, 1), 1.0)
    return float(np.mean((k / ranks + before) / 2))


AVERAGE_PRECISION = {"torchreid": average_precision_torchreid, "official": average_precision_mars}


def evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
    protocol: str = "torchreid",
) -> dict:
    """{"mAP", "mINP", "cmc" (list, rank-1 first), "num_valid_queries", "num_skipped_queries", "protocol"}.

    distmat: (num_q, num_g), smaller is closer. The CMC curve has min(max_rank, num_g) entries.
    protocol: "torchreid" or "official" (MARS's average precision). Raises ValueError when shapes
    disagree, the protocol is unknown or no query has a match.
    """
    if protocol not in AVERAGE_PRECISION:
        raise ValueError(f"protocol: expected one of {list(AVERAGE_PRECISION)}, got {protocol!r}")
    average_precision = AVERAGE_PRECISION[protocol]
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
        ranks = np.flatnonzero(hits) + 1.0
        aps.append(average_precision(ranks))
        inps.append(float(len(ranks) / ranks[-1]))
    valid = len(aps)
    if valid == 0:
        raise ValueError("q_pids: no query has a match in the gallery (after same-camera removal)")
    return {
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "cmc": (cmc_sum / valid).tolist(),
        "num_valid_queries": valid,
        "num_skipped_queries": num_q - valid,
        "protocol": protocol,
    }
