"""train.metrics.evaluate against hand-computed cases: torchreid's average precision, and MARS's
(protocol "official") against hand-computed cases and a direct trapezoid integration."""

import numpy as np
import pytest

from train.metrics import AVERAGE_PRECISION, evaluate


def test_same_camera_matches_are_removed_and_queries_without_match_are_skipped():
    # Gallery: 0 pid1 cam0 (same camera as query 0: removed), 1 pid2 cam1, 2 pid1 cam1,
    #          3 pid0 cam1 (distractor), 4 pid1 cam2, 5 pid2 cam2.
    g_pids = np.array([1, 2, 1, 0, 1, 2])
    g_cams = np.array([0, 1, 1, 1, 2, 2])
    q_pids = np.array([1, 7, 2])
    q_cams = np.array([0, 0, 0])
    distmat = np.array(
        [
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # ranked after removal: 2 1 0 1 2 → hits 0 1 0 1 0
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # pid 7 is nowhere in the gallery
            [0.6, 0.5, 0.4, 0.1, 0.3, 0.2],  # ranked: 3 5 4 2 1 0 → pids 0 2 1 1 2 1
        ]
    )
    out = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    # query 0: hits at ranks 2 and 4 → AP = (1/2 + 2/4) / 2, INP = 2/4.
    # query 2: hits at ranks 2 and 5 → AP = (1/2 + 2/5) / 2, INP = 2/5.
    assert out["num_valid_queries"] == 2
    assert out["num_skipped_queries"] == 1
    assert out["mAP"] == pytest.approx(((0.5 + 0.5) / 2 + (0.5 + 2 / 5) / 2) / 2)
    assert out["mINP"] == pytest.approx((0.5 + 2 / 5) / 2)
    assert out["cmc"] == pytest.approx([0.0, 1.0, 1.0, 1.0, 1.0])


def test_perfect_ranking_gives_ones_and_cmc_is_cut_to_gallery_size():
    g_pids = np.array([3, 4, 5])
    g_cams = np.array([1, 1, 1])
    distmat = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]])
    out = evaluate(distmat, np.array([3, 4]), g_pids, np.array([0, 0]), g_cams, max_rank=20)
    assert out["mAP"] == 1.0 and out["mINP"] == 1.0
    assert out["cmc"] == [1.0, 1.0, 1.0]


def test_same_pid_other_camera_counts_but_same_pid_same_camera_does_not():
    # Gallery items of the query's pid: one in its own camera (junk), one elsewhere at rank 3.
    g_pids = np.array([9, 5, 6, 9])
    g_cams = np.array([2, 0, 0, 1])
    out = evaluate(np.array([[0.0, 0.1, 0.2, 0.3]]), np.array([9]), g_pids, np.array([2]), g_cams, max_rank=3)
    assert out["cmc"] == [0.0, 0.0, 1.0]
    assert out["mAP"] == pytest.approx(1 / 3)
    assert out["mINP"] == pytest.approx(1 / 3)


def test_ties_keep_gallery_order():
    out = evaluate(np.zeros((1, 3)), np.array([1]), np.array([2, 1, 1]), np.array([0]), np.array([1, 1, 1]))
    assert out["cmc"] == [0.0, 1.0, 1.0]
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_no_query_with_a_match_is_an_error():
    with pytest.raises(ValueError, match="no query has a match"):
        evaluate(np.zeros((1, 2)), np.array([1]), np.array([2, 3]), np.array([0]), np.array([1, 1]))


def test_mismatched_shapes_name_the_argument():
    with pytest.raises(ValueError, match="g_camids"):
        evaluate(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([1]))


# ---------------------------------------------------------------- MARS's average precision (protocol "official")


def _one_query(hit_ranks: list[int], length: int) -> tuple:
    """One query of pid 1 (camera 0) whose ranked gallery (camera 1) has its matches at ``hit_ranks``."""
    g_pids = np.array([1 if r + 1 in hit_ranks else 2 for r in range(length)])
    return np.arange(length, dtype=float)[None], np.array([1]), g_pids, np.array([0]), np.ones(length, int)


@pytest.mark.parametrize(
    "hit_ranks, mars_ap, torchreid_ap",
    [
        ([1], 1.0, 1.0),
        ([2], (0 / 1 + 1 / 2) / 2, 1 / 2),  # the curve falls from precision 1 to 0 before rising to 1/2
        ([1, 3], ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2, (1 + 2 / 3) / 2),
        ([3, 4], ((0 + 1 / 3) / 2 + (1 / 3 + 2 / 4) / 2) / 2, (1 / 3 + 2 / 4) / 2),
    ],
)
def test_official_protocol_uses_mars_trapezoid_average_precision(hit_ranks, mars_ap, torchreid_ap):
    case = _one_query(hit_ranks, 5)
    assert evaluate(*case, protocol="official")["mAP"] == pytest.approx(mars_ap)
    assert evaluate(*case, protocol="torchreid")["mAP"] == pytest.approx(torchreid_ap)


def test_official_protocol_removes_same_camera_matches_first_and_keeps_cmc_and_minp():
    g_pids = np.array([1, 2, 1, 0, 1, 2])
    g_cams = np.array([0, 1, 1, 1, 2, 2])
    distmat = np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.5, 0.4, 0.1, 0.3, 0.2]])
    args = (distmat, np.array([1, 2]), g_pids, np.array([0, 0]), g_cams)
    official, torchreid = evaluate(*args, max_rank=5, protocol="official"), evaluate(*args, max_rank=5)
    # query 0, hits at ranks 2 and 4: (1/4 + (2/4 + 1/3)/2) / 2 = 1/3; query 1, ranks 2 and 5: 23/80.
    assert official["mAP"] == pytest.approx((1 / 3 + 23 / 80) / 2)
    assert official["cmc"] == torchreid["cmc"] and official["mINP"] == torchreid["mINP"]
    assert (official["protocol"], torchreid["protocol"]) == ("official", "torchreid")


def _trapezoid_over_the_curve(distmat, q_pids, g_pids, q_cams, g_cams) -> float:
    """MARS's AP by direct integration: walk every ranked, non-junk item, tracking recall and precision."""
    aps = []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        good = (g_pids[order] == q_pids[i])[~junk]
        if not good.any():
            continue
        area, recall, precision, found = 0.0, 0.0, 1.0, 0
        for position, is_good in enumerate(good, start=1):
            found += int(is_good)
            new_recall, new_precision = found / good.sum(), found / position
            area += (new_recall - recall) * (precision + new_precision) / 2
            recall, precision = new_recall, new_precision
        aps.append(area)
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", range(5))
def test_official_average_precision_equals_the_trapezoid_integral_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, 6, 8), rng.integers(0, 6, 40)
    q_cams, g_cams = rng.integers(0, 3, 8), rng.integers(0, 3, 40)
    distmat = rng.random((8, 40))
    got = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, protocol="official")["mAP"]
    assert got == pytest.approx(_trapezoid_over_the_curve(distmat, q_pids, g_pids, q_cams, g_cams), rel=1e-12)


def test_every_dataset_protocol_has_an_average_precision():
    from train.data.tracklet import PROTOCOLS

    assert set(AVERAGE_PRECISION) == set(PROTOCOLS)
    with pytest.raises(ValueError, match="protocol: expected one of"):
        evaluate(np.zeros((1, 1)), np.array([1]), np.array([1]), np.array([0]), np.array([1]), protocol="mars")
