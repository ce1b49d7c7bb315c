"""Drop-in modules: RelationModule, RGSA (spatial attention) and RGTR (temporal refinement).

The ``backend`` argument changes speed and memory only: parameters, state_dict and results are
the same whatever it is. Defaults follow the paper at C = 2048: hidden C/8, relation C/16.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fastrel import activations, checks
from fastrel.ops import global_relation

Tensor = torch.Tensor


class RelationModule(nn.Module):
    """Global relation vector of every item of a set to every (valid) item of a set.

    x: (B, N, C) → (B, N, R). a = W_a x + β_a, b = W_b y (y = x unless given), then
    ``global_relation(a, b, W_r, β_r)`` (docs/math.md).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        relation_channels: int,
        *,
        inner: str = "relu",
        outer: str = "relu",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = checks.positive(in_channels, "in_channels")
        self.hidden_channels = checks.positive(hidden_channels, "hidden_channels")
        self.relation_channels = checks.positive(relation_channels, "relation_channels")
        self.inner = checks.activation(inner, activations.INNER, "inner")
        self.outer = checks.activation(outer, activations.OUTER, "outer")
        self.backend = checks.backend(backend)
        self.query = nn.Linear(in_channels, hidden_channels, bias=True)  # W_a, β_a
        self.key = nn.Linear(in_channels, hidden_channels, bias=False)  # W_b
        self.project = nn.Linear(hidden_channels, relation_channels)  # W_r, β_r

    def forward(self, x: Tensor, y: Optional[Tensor] = None, key_mask: Optional[Tensor] = None) -> Tensor:
        checks.features(x, "(B, N, C)", self.in_channels)
        keys = x if y is None else y
        return global_relation(
            self.query(x),
            self.key(keys),
            self.project.weight,
            self.project.bias,
            inner=self.inner,
            outer=self.outer,
            key_mask=key_mask,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"inner={self.inner!r}, outer={self.outer!r}, backend={self.backend!r}"


class _RelationGuided(nn.Module):
    """What RGSA and RGTR share: a RelationModule with the paper's sizes (hidden C/8, relation C/16
    where left out), then the head each builds over [x ; g] (``_build_head``)."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Optional[int] = None,
        relation_channels: Optional[int] = None,
        *,
        inner: str = "relu",
        outer: str = "relu",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        checks.positive(in_channels, "in_channels")
        hidden = hidden_channels if hidden_channels is not None else max(in_channels // 8, 1)
        relation = relation_channels if relation_channels is not None else max(in_channels // 16, 1)
        self.relation = RelationModule(in_channels, hidden, relation, inner=inner, outer=outer, backend=backend)
        self.in_channels = in_channels
        self._build_head(in_channels, self.relation.relation_channels)

    def _build_head(self, in_channels: int, relation_channels: int) -> None:
        raise NotImplementedError


class RGSA(_RelationGuided):
    """Relation-guided spatial attention: feature map (B, C, Hf, Wf) → frame feature (B, C).

    Each position's score is BN(FC([x_i ; g_i])) (a 1×1 receptive field), α = softmax over the
    positions, and the frame feature is Σ_i α_i x_i. ``return_attention=True`` also returns α
    as (B, Hf, Wf).
    """

    def _build_head(self, in_channels: int, relation_channels: int) -> None:
        # BN follows: a bias would be void.
        self.score = nn.Linear(in_channels + relation_channels, 1, bias=False)
        self.norm = nn.BatchNorm1d(1)

    def forward(self, x: Tensor, return_attention: bool = False):
        checks.features(x, "(B, C, Hf, Wf)", self.in_channels)
        B, C, Hf, Wf = x.shape
        items = x.flatten(2).transpose(1, 2)  # (B, N, C)
        g = self.relation(items)  # (B, N, R)
        score = self.score(torch.cat([items, g.to(items.dtype)], dim=2))  # (B, N, 1)
        score = self.norm(score.transpose(1, 2)).squeeze(1)  # (B, N)
        alpha = torch.softmax(score.float(), dim=1).to(items.dtype)
        feature = torch.bmm(alpha.unsqueeze(1), items).squeeze(1)  # (B, C)
        if return_attention:
            return feature, alpha.view(B, Hf, Wf)
        return feature


class RGTR(_RelationGuided):
    """Relation-guided temporal refinement: frame features (B, T, C) → (clip (B, C), refined (B, T, C)).

    Refined f'_t = BN(FC([f_t ; g_t])) with g over the valid frames, or with ``residual=True``
    f'_t = f_t + FC([f_t ; g_t]) (no BN; the FC starts at zero, so RGTR starts as the temporal
    mean); the clip feature is the mean of the valid refined frames. Clips of different lengths:
    ``lengths`` (B,) or ``mask`` (B, T).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Optional[int] = None,
        relation_channels: Optional[int] = None,
        *,
        inner: str = "relu",
        outer: str = "relu",
        backend: str = "auto",
        residual: bool = False,
    ) -> None:
        if not isinstance(residual, bool):
            raise ValueError(f"residual: expected a bool, got {residual!r}")
        self.residual = residual
        super().__init__(
            in_channels, hidden_channels, relation_channels, inner=inner, outer=outer, backend=backend
        )

    def _build_head(self, in_channels: int, relation_channels: int) -> None:
        self.refine = nn.Linear(in_channels + relation_channels, in_channels, bias=False)
        if self.residual:  # the branch starts at zero; no BN
            nn.init.zeros_(self.refine.weight)
            self.norm = None
        else:  # BN follows: a bias would be void
            self.norm = nn.BatchNorm1d(in_channels)

    def forward(
        self, x: Tensor, lengths: Optional[Tensor] = None, mask: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        checks.features(x, "(B, T, C)", self.in_channels)
        mask = _frame_mask(x, lengths, mask)
        g = self.relation(x, key_mask=mask)  # (B, T, R)
        refined = self.refine(torch.cat([x, g.to(x.dtype)], dim=2))  # (B, T, C)
        if self.residual:
            refined = x + refined
        if mask is None:
            if self.norm is not None:
                refined = self.norm(refined.flatten(0, 1)).view_as(refined)
            return refined.mean(dim=1), refined
        if self.norm is not None:
            # Normalise with the statistics of valid frames only.
            refined = torch.zeros_like(refined).index_put((mask,), self.norm(refined[mask]))
        weights = mask.to(refined.dtype)
        refined = refined * weights[..., None]  # padding stays zero
        clip = refined.sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1)
        return clip, refined

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


def _frame_mask(x: Tensor, lengths: Optional[Tensor], mask: Optional[Tensor]) -> Optional[Tensor]:
    """The (B, T) bool mask of valid frames, from ``lengths`` or ``mask`` (at most one)."""
    B, T, _ = x.shape
    if lengths is not None and mask is not None:
        raise ValueError("lengths, mask: expected at most one of them, got both")
    if lengths is not None:
        if not isinstance(lengths, Tensor) or lengths.shape != (B,) or lengths.is_floating_point():
            raise ValueError(f"lengths: expected an integer tensor of shape ({B},), got {lengths!r}")
        if (lengths < 0).any() or (lengths > T).any():
            raise ValueError(f"lengths: expected values in [0, {T}], got {lengths.tolist()}")
        return torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, T):
            got = f"shape {tuple(mask.shape)}, dtype {mask.dtype}" if isinstance(mask, Tensor) else repr(mask)
            raise ValueError(f"mask: expected a bool tensor of shape ({B}, {T}), got {got}")
        return mask
    return None
