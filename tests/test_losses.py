"""The adaptive weighted triplet loss against a direct, loop-by-loop reading of its formula."""

import math

import pytest
import torch

from train.losses import WeightedTripletLoss, pairwise_euclidean


def direct_weighted_triplet(features: torch.Tensor, pids: list[int], form: str, margin: float) -> float:
    n = len(pids)
    d = [[math.dist(features[i].tolist(), features[j].tolist()) for j in range(n)] for i in range(n)]
    losses = []
    for i in range(n):
        pos = [d[i][j] for j in range(n) if j != i and pids[j] == pids[i]]
        neg = [d[i][j] for j in range(n) if pids[j] != pids[i]]
        if not pos or not neg:
            continue
        wp = [math.exp(x) for x in pos]
        wn = [math.exp(-x) for x in neg]
        d_pos = sum(w * x for w, x in zip(wp, pos, strict=True)) / sum(wp)
        d_neg = sum(w * x for w, x in zip(wn, neg, strict=True)) / sum(wn)
        gap = d_pos - d_neg
        losses.append(math.log1p(math.exp(gap)) if form == "soft" else max(0.0, gap + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("form", ["soft", "margin"])
def test_weighted_triplet_matches_the_direct_formula(form):
    torch.manual_seed(0)
    features = torch.randn(10, 5, dtype=torch.float64)
    pids = [0, 0, 0, 1, 1, 2, 2, 2, 3, 4]  # pids 3 and 4 have no positive: not anchors
    margin = 0.5 if form == "margin" else 0.3
    loss = WeightedTripletLoss(form, margin)(features, torch.tensor(pids))
    assert loss.item() == pytest.approx(direct_weighted_triplet(features, pids, form, margin), rel=1e-5)


def test_margin_form_is_zero_when_classes_are_far_apart():
    features = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
    loss = WeightedTripletLoss("margin", 0.3)(features, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0


def test_weighted_triplet_gradient_is_finite_for_identical_features():
    features = torch.zeros(4, 3, requires_grad=True)
    WeightedTripletLoss("soft")(features, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(features.grad).all()


def test_pairwise_euclidean_matches_cdist():
    x = torch.randn(7, 4, dtype=torch.float64)
    assert torch.allclose(pairwise_euclidean(x), torch.cdist(x, x), atol=1e-6)


def test_unknown_triplet_form_names_the_option():
    with pytest.raises(ValueError, match="loss.triplet"):
        WeightedTripletLoss("hard")
