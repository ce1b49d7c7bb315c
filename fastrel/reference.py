"""The materialising reference: DESIGN §1 written as plainly as possible.

Holds every pair (B, N, M, H) in memory, computes in the inputs' dtype (float64 included) and lets
autograd produce the gradients. Every backend is tested against it; it is also the ``reference``
backend and the baseline of the benchmarks.
"""

from __future__ import annotations

import torch

from fastrel import activations


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
    p = activations.apply(a[:, :, None, :] - b[:, None, :, :], inner)  # (B, N, M, H)
    z = torch.matmul(p, weight.t())  # (B, N, M, R)
    if bias is not None:
        z = z + bias
    r = activations.apply(z, outer)
    if key_mask is None:
        return r.mean(dim=2)
    m = key_mask.to(r.dtype)  # (B, M)
    count = m.sum(dim=1).clamp(min=1)  # (B,)
    return (r * m[:, None, :, None]).sum(dim=2) / count[:, None, None]


def global_relation_backward(
    grad: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    inner: str = "relu",
    outer: str = "relu",
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of DESIGN §1 written out (docs/math.md): (da, db, dweight, dbias), materialising."""
    d = a[:, :, None, :] - b[:, None, :, :]  # (B, N, M, H)
    p = activations.apply(d, inner)
    z = torch.matmul(p, weight.t())
    if bias is not None:
        z = z + bias
    m = key_mask.to(a.dtype) if key_mask is not None else a.new_ones(b.shape[0], b.shape[1])
    count = m.sum(dim=1).clamp(min=1)
    dz = activations.derivative(z, outer) * m[:, None, :, None] * (grad / count[:, None, None])[:, :, None, :]
    du = activations.derivative(d, inner) * torch.matmul(dz, weight)  # (B, N, M, H)
    dweight = torch.einsum("bnmr,bnmh->rh", dz, p)
    return du.sum(dim=2), -du.sum(dim=1), dweight, dz.sum(dim=(0, 1, 2))
