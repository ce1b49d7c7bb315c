"""Test-time features (chunk averaging with a padded last chunk, RGTR over all frames), cosine
distances and k-reciprocal re-ranking."""

import numpy as np
import pytest
import torch
from torch import nn

from train.config import EvalConfig
from train.data.temporal import evenly
from train.evaluate import cosine_distance, tracklet_feature
from train.model import VideoReIDModel
from train.rerank import k_reciprocal_rerank


def tiny_model(head: str) -> VideoReIDModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    model = VideoReIDModel(backbone, 8, 5, head=head, hidden_channels=8, relation_channels=4)
    model.train()
    with torch.no_grad():  # give the BatchNorms non-trivial running statistics
        model(torch.randn(4, 3, 3, 6, 4))
    return model.eval()


@pytest.mark.parametrize("head", ["relation", "avgpool"])
def test_chunk_features_average_the_chunks_with_a_short_last_chunk(head):
    model = tiny_model(head)
    frames = torch.randn(10, 3, 6, 4)
    config = EvalConfig(mode="chunks", chunk_len=4, batch_size=2)
    got = tracklet_feature(model, frames, config, torch.device("cpu"))
    with torch.no_grad():
        chunks = [frames[0:4], frames[4:8], frames[8:10]]
        expected = torch.stack([model(c[None]).embedding[0] for c in chunks]).mean(dim=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_all_mode_runs_rgtr_over_every_frame_or_an_even_subset():
    model = tiny_model("relation")
    frames = torch.randn(9, 3, 6, 4)
    with torch.no_grad():
        every = model(frames[None]).embedding[0]
        subset = model(frames[[0, 4, 8]][None]).embedding[0]
    device = torch.device("cpu")
    torch.testing.assert_close(tracklet_feature(model, frames, EvalConfig(mode="all"), device), every)
    torch.testing.assert_close(tracklet_feature(model, frames, EvalConfig(mode="all", max_frames=3), device), subset)


def test_cosine_distance_is_one_minus_cosine_of_l2_normalised_features():
    x = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    expected = torch.tensor([[0.0, 1.0], [1 - 2**-0.5, 1 - 2**-0.5]])
    torch.testing.assert_close(cosine_distance(x, y), expected)


def _clustered(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 4
    q = centres[[0, 1, 2]] + rng.normal(size=(3, 8)) * 0.5
    g = np.repeat(centres, 4, axis=0) + rng.normal(size=(12, 8)) * 0.5
    d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=2)  # noqa: E731
    return d(q, g), d(q, q), d(g, g)


def test_rerank_with_lambda_one_is_the_normalised_squared_original():
    q_g, q_q, g_g = _clustered()
    out = k_reciprocal_rerank(q_g, q_q, g_g, k1=4, k2=2, lambda_value=1.0)
    squared = q_g**2
    row_max = np.maximum(np.max(np.concatenate([q_q**2, squared], axis=1), axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(out, squared / row_max, rtol=1e-5)


def test_rerank_keeps_each_query_closest_to_its_own_cluster():
    q_g, q_q, g_g = _clustered()
    out = k_reciprocal_rerank(q_g, q_q, g_g, k1=4, k2=2, lambda_value=0.3)
    assert out.shape == q_g.shape
    assert np.all((out >= 0) & (out <= 1 + 1e-6))
    for i in range(3):
        own = out[i, 4 * i : 4 * i + 4]
        others = np.delete(out[i], np.arange(4 * i, 4 * i + 4))
        assert own.max() < others.min()


def test_rerank_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="q_q, g_g"):
        k_reciprocal_rerank(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))


def test_plots_and_evaluate_do_not_import_each_other():
    import ast
    from pathlib import Path

    def imported(module: str) -> set[str]:
        tree = ast.parse((Path(__file__).parents[1] / "train" / f"{module}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            f"train.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "train"
            for a in n.names
        }

    assert "train.evaluate" not in imported("plots")
    assert evenly(9, 3).tolist() == [0, 4, 8] and evenly(4, 0).tolist() == [0, 1, 2, 3]
