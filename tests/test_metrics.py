"""train.metrics.evaluate against hand-computed cases (torchreid's protocol)."""

import numpy as np
import pytest

from train.metrics import evaluate


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
