"""The materialising reference: docs/math.md written as plainly as possible.

Holds every pair (B, N, M, H) in memory, computes in the inputs' dtype (float64 included) and lets
autograd produce the gradients. Every backend is tested against it; it is also the ``reference``
backend and the baseline of the benchmarks. A key with m_j = 0 takes no part at all: its values
are replaced before the pairs are formed and its terms selected out, so a NaN or inf there never
reaches g or a gradient.
"""

from __future__ import annotations

import torch

from fastrel import activations


def _valid_keys(b: torch.Tensor, key_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b with excluded keys set to 0, m as bool (B, M), n = max(Σ_j m_j, 1) as (B, 1, 1) in b's dtype)."""
    m = key_mask if key_mask is not None else torch.ones(b.shape[:2], dtype=torch.bool, device=b.device)
    keys = torch.where(m[:, :, None], b, 0.0)
    n = m.sum(dim=1).clamp(min=1).to(b.dtype)[:, None, None]
    return keys, m, n


def _pairs(
    a: torch.Tensor, keys: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, inner: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (B, N, M, ·): d = a_i − b_j, p = δ(d) and z = W_r p + β_r."""
    d = a[:, :, None, :] - keys[:, None, :, :]
    p = activations.activate(d, inner)
    z = torch.matmul(p, weight.t())
    if bias is not None:
        z = z + bias
    return d, p, z


def global_relation(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    inner: str = "relu",
    outer: str = "relu",
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """g_i = Σ_j m_j σ(W_r δ(a_i − b_j) + β_r) / max(Σ_j m_j, 1); a: (B, N, H), b: (B, M, H) → (B, N, R)."""
    keys, m, n = _valid_keys(b, key_mask)
    _, _, z = _pairs(a, keys, weight, bias, inner)
    r = activations.activate(z, outer)
    return torch.where(m[:, None, :, None], r, 0.0).sum(dim=2) / n


def global_relation_backward(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    key_mask: torch.Tensor | None, inner: str, outer: str, deterministic: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of docs/math.md written out: (da, db, dweight, dbias), materialising. It takes a
    backend's arguments (fastrel.backends.base.Backward) and is deterministic whatever ``deterministic``."""
    keys, m, n = _valid_keys(b, key_mask)
    d, p, z = _pairs(a, keys, weight, bias, inner)
    dz = torch.where(m[:, None, :, None], activations.derivative(z, outer) * (grad / n)[:, :, None, :], 0.0)
    du = activations.derivative(d, inner) * torch.matmul(dz, weight)  # (B, N, M, H)
    dweight = torch.einsum("bnmr,bnmh->rh", dz, p)
    return du.sum(dim=2), -du.sum(dim=1), dweight, dz.sum(dim=(0, 1, 2))
