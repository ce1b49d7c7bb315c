"""The ``sort`` backend: the exact O((N + M) log M · H) path for outer = identity, inner ∈ {relu, abs}.

With σ = identity the projection leaves the pair loop: g_i = W_r D_i + β_r, D_i = mean_j m_j δ(a_i − b_j).
For δ = relu or abs every channel of D follows from that channel's keys sorted once with prefix sums
(docs/sort_path.md), forward and backward. On the CPU the per-channel work runs in C++ (fastrel._C)
when it is built; the torch-ops implementation (sort, cumsum, searchsorted) runs everywhere else,
CUDA included, and is deterministic (stable sorts, gathers, scans; no atomics).
"""

from __future__ import annotations

from types import ModuleType

import torch

from fastrel import activations, dtypes
from fastrel.backends import native as _native
from fastrel.backends.base import Backend, Preference

Tensor = torch.Tensor

#: False forces the torch-ops implementation even where the C++ one is built (tests use it).
PREFER_NATIVE = True

#: Prefix sums run in float64 whatever the input dtype: a float32 scan over thousands of keys
#: loses bits that the reference's pairwise sums keep (docs/sort_path.md, "Precision").
SUM_DTYPE = torch.float64


def native() -> ModuleType | None:
    """fastrel._C when it is built with the sort kernels, else None."""
    try:
        extension = _native.module()
    except ImportError:
        return None
    return extension if hasattr(extension, "global_relation_sort_forward_cpu") else None


def _use_native(a: Tensor) -> bool:
    return PREFER_NATIVE and a.device.type == "cpu" and native() is not None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype D, its gradient and the GEMMs around it are kept in: float64 for float64, else float32."""
    return dtypes.accumulation(dtype)


def _key_counts(b: Tensor, key_mask: Tensor | None) -> Tensor:
    """Number of valid keys per batch element, (B,) int64."""
    if key_mask is None:
        return torch.full((b.shape[0],), b.shape[1], dtype=torch.int64, device=b.device)
    return key_mask.sum(dim=1)


# --------------------------------------------------------------------------------------------
# The mean difference D (B, N, H) and its backward, as torch ops.
# --------------------------------------------------------------------------------------------


class _SortedKeys:
    """One batch's keys sorted per channel (masked keys last, as +inf), with centred prefix sums."""

    def __init__(self, b: Tensor, key_mask: Tensor | None) -> None:
        B, M, _ = b.shape
        keys = b.transpose(1, 2).to(compute_dtype(b.dtype))  # (B, H, M), exact conversion
        if key_mask is not None:
            keys = keys.masked_fill(~key_mask[:, None, :], float("inf"))
        self.keys = keys.contiguous()
        self.count = _key_counts(b, key_mask)[:, None, None]  # (B, 1, 1)
        self.n = self.count.clamp(min=1)
        self.sorted = torch.sort(keys, dim=-1, stable=True).values.contiguous()
        valid = torch.arange(M, device=b.device)[None, None, :] < self.count  # (B, 1, M)
        wide = torch.where(valid, self.sorted.to(SUM_DTYPE), 0.0)
        self.centre = wide.sum(dim=-1, keepdim=True) / self.n  # (B, H, 1)
        centred = torch.where(valid, wide - self.centre, 0.0)
        self.prefix = torch.nn.functional.pad(torch.cumsum(centred, dim=-1), (1, 0))  # (B, H, M + 1)

    def relate(self, queries: Tensor, inner: str) -> tuple[Tensor, Tensor]:
        """Σ_j δ(q − b_j) over valid keys and its derivative in q, for queries (B, H, N)."""
        below = torch.minimum(torch.searchsorted(self.sorted, queries, side="left"), self.count)
        q = queries.to(SUM_DTYPE) - self.centre
        total = below * q - self.prefix.gather(-1, below)
        slope = below
        if inner == "abs":
            not_above = torch.minimum(torch.searchsorted(self.sorted, queries, side="right"), self.count)
            above = self.count - not_above
            last = self.prefix.gather(-1, self.count.expand(*queries.shape[:2], 1))
            total = total + (last - self.prefix.gather(-1, not_above)) - above * q
            slope = below - above
        return total, slope


def _torch_mean_difference(a: Tensor, b: Tensor, key_mask: Tensor | None, inner: str) -> Tensor:
    """D (B, N, H) = mean_j m_j δ(a_i − b_j) in compute_dtype(a.dtype)."""
    keys = _SortedKeys(b, key_mask)
    queries = a.transpose(1, 2).to(compute_dtype(a.dtype)).contiguous()
    total, _ = keys.relate(queries, inner)
    return (total / keys.n).to(compute_dtype(a.dtype)).transpose(1, 2).contiguous()


def _torch_mean_difference_backward(
    grad_mean: Tensor, a: Tensor, b: Tensor, key_mask: Tensor | None, inner: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(D, dL/da, dL/db) given dL/dD; all (B, ·, H) in compute_dtype(a.dtype)."""
    dtype = compute_dtype(a.dtype)
    keys = _SortedKeys(b, key_mask)
    queries = a.transpose(1, 2).to(dtype).contiguous()  # (B, H, N)
    total, slope = keys.relate(queries, inner)
    grad = grad_mean.transpose(1, 2).to(SUM_DTYPE) / keys.n  # (B, H, N), dL/dΣ
    da = grad * slope
    # db_j = −Σ_{a_i > b_j} grad_i (+ Σ_{a_i < b_j} grad_i for abs): scan grad in query order.
    sorted_queries, order = torch.sort(queries, dim=-1, stable=True)
    sorted_queries = sorted_queries.contiguous()
    scan = torch.nn.functional.pad(torch.cumsum(grad.gather(-1, order), dim=-1), (1, 0))  # (B, H, N + 1)
    last = scan[..., -1:]
    not_above = torch.searchsorted(sorted_queries, keys.keys, side="right")
    db = scan.gather(-1, not_above) - last
    if inner == "abs":
        db = db + scan.gather(-1, torch.searchsorted(sorted_queries, keys.keys, side="left"))
    if key_mask is not None:
        db = db * key_mask[:, None, :]
    mean = (total / keys.n).to(dtype).transpose(1, 2).contiguous()
    return mean, da.to(dtype).transpose(1, 2).contiguous(), db.to(dtype).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# The backend: D by the fastest implementation available, then the projection.
# --------------------------------------------------------------------------------------------


def mean_difference(a: Tensor, b: Tensor, key_mask: Tensor | None, inner: str) -> Tensor:
    """D (B, N, H) = Σ_j m_j δ(a_i − b_j) / max(Σ_j m_j, 1), in compute_dtype(a.dtype)."""
    if _use_native(a):
        return native().global_relation_sort_forward_cpu(a, b, key_mask, activations.CODES[inner])
    return _torch_mean_difference(a, b, key_mask, inner)


def mean_difference_backward(
    grad_mean: Tensor, a: Tensor, b: Tensor, key_mask: Tensor | None, inner: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(D, dL/da, dL/db) given dL/dD (B, N, H) in compute_dtype(a.dtype)."""
    if _use_native(a):
        mean, da, db = native().global_relation_sort_backward_cpu(
            grad_mean, a, b, key_mask, activations.CODES[inner]
        )
        return mean, da, db
    return _torch_mean_difference_backward(grad_mean, a, b, key_mask, inner)


def _has_key(b: Tensor, key_mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(B, 1, 1) 1 where the batch element has a valid key, else 0: where the bias applies."""
    return (_key_counts(b, key_mask) > 0).to(dtype)[:, None, None]


def forward(a, b, weight, bias, key_mask, inner, outer):
    dtype = compute_dtype(a.dtype)
    g = torch.matmul(mean_difference(a, b, key_mask, inner), weight.to(dtype).t())  # (B, N, R)
    if bias is not None:
        g = g + bias.to(dtype) * _has_key(b, key_mask, dtype)
    return g.to(a.dtype)


def backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic):
    dtype = compute_dtype(a.dtype)
    grad = grad.to(dtype)
    grad_mean = torch.matmul(grad, weight.to(dtype))  # (B, N, H): dL/dD = W_rᵀ dG
    mean, da, db = mean_difference_backward(grad_mean, a, b, key_mask, inner)
    dweight = torch.matmul(grad.flatten(0, 1).t(), mean.flatten(0, 1))  # (R, H)
    dbias = (grad * _has_key(b, key_mask, dtype)).sum(dim=(0, 1))
    return da.to(a.dtype), db.to(b.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype)


BACKEND = Backend(
    name="sort",
    summary="exact O((N+M) log M·H) path for outer=identity, inner relu/abs (C++ on CPU, else torch ops)",
    devices=("cpu", "cuda"),
    dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
    forward=forward,
    backward=backward,
    inner=("relu", "abs"),
    outer=("identity",),
    deterministic=True,
    preferred=(
        Preference(
            "exact and O((N+M) log M·H) where the pairwise kernels are O(N·M·H·R)",
            devices=("cpu", "cuda"),
        ),
    ),
)
