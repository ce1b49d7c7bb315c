"""Training losses: label-smoothed cross-entropy on frame and clip logits, and the adaptive
weighted triplet loss (Ristani & Tomasi 2018) on clip features, combined with configurable weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.config import LossConfig
from train.distributed import all_gather_rows
from train.model import ModelOutput

Tensor = torch.Tensor

TRIPLET_FORMS = ("soft", "margin")


def pairwise_euclidean(x: Tensor) -> Tensor:
    """(n, n) Euclidean distances between the rows of ``x`` (at least fp32), with a finite gradient at 0."""
    x = x if x.dtype == torch.float64 else x.float()
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


class WeightedTripletLoss(nn.Module):
    """Adaptive weighted triplet: per anchor, d⁺ = Σ softmax(d_ap)·d_ap over its positives and
    d⁻ = Σ softmin(d_an)·d_an over its negatives; loss = softplus(d⁺ − d⁻) ("soft") or
    max(0, d⁺ − d⁻ + margin) ("margin"), averaged over anchors that have both kinds."""

    def __init__(self, form: str = "soft", margin: float = 0.3) -> None:
        super().__init__()
        if form not in TRIPLET_FORMS:
            raise ValueError(f"loss.triplet: expected one of {list(TRIPLET_FORMS)}, got {form!r}")
        self.form = form
        self.margin = margin

    def forward(self, features: Tensor, pids: Tensor) -> Tensor:
        dist = pairwise_euclidean(features)
        same = pids[:, None] == pids[None, :]
        eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
        positive = same & ~eye
        negative = ~same
        usable = positive.any(dim=1) & negative.any(dim=1)
        if not usable.any():
            return dist.sum() * 0.0
        d_pos = _weighted_mean(dist, positive, sign=1.0)
        d_neg = _weighted_mean(dist, negative, sign=-1.0)
        gap = (d_pos - d_neg)[usable]
        if self.form == "soft":
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()


def _weighted_mean(dist: Tensor, mask: Tensor, sign: float) -> Tensor:
    """Σ_j w_ij d_ij with w_i = softmax(sign·d_i) over the j in ``mask`` (0 where none)."""
    logits = (sign * dist).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
    return (weights * dist).sum(dim=1)


class ReIDLoss(nn.Module):
    """w_f·CE(frame logits) + w_c·CE(clip logits) + w_t·triplet(clip features over the global batch).

    Under DDP the clip features and pids of every rank are gathered (with gradient) so the triplet
    term is that of the global batch; the CE terms are per-rank means, which DDP's gradient average
    turns into the global mean.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.smoothing = config.label_smoothing
        self.weights = (config.frame_weight, config.clip_weight, config.triplet_weight)
        self.triplet = WeightedTripletLoss(config.triplet, config.margin)

    def forward(self, output: ModelOutput, pids: Tensor) -> tuple[Tensor, dict[str, float]]:
        T = output.frame_logits.shape[1]
        frame_ce = F.cross_entropy(
            output.frame_logits.flatten(0, 1).float(),
            pids.repeat_interleave(T),
            label_smoothing=self.smoothing,
        )
        clip_ce = F.cross_entropy(output.clip_logits.float(), pids, label_smoothing=self.smoothing)
        triplet = self.triplet(all_gather_rows(output.clip_feature.float()), all_gather_rows(pids))
        w_f, w_c, w_t = self.weights
        total = w_f * frame_ce + w_c * clip_ce + w_t * triplet
        parts = {"frame_ce": frame_ce.item(), "clip_ce": clip_ce.item(), "triplet": triplet.item()}
        return total, parts
