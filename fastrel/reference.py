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
