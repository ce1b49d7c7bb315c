"""The implementations a user would compare fastrel against, all on the same inputs.

Each peer is built into a function ``fn(a, b, weight, bias, key_mask) -> g (B, N, R)`` with the
activations fixed, so the benchmark times every implementation through one calling convention.

- ``reference``: ``fastrel.reference.global_relation``, materialises every pair (B, N, M, H).
- ``compiled``: ``torch.compile`` of the reference (static shapes); the compile happens in the
  benchmark's warm-up, outside the timed region, and its duration is reported separately.
- ``chunked``: the reference over row chunks of i, so that only (B, chunk, M, H) pairs exist at
  a time; with autograd enabled each chunk runs under ``torch.utils.checkpoint`` so the backward
  keeps one chunk's pairs, not all of them. The chunk is chosen from a memory budget.
- ``keops``: PyKeOps ``LazyTensor`` formulation (symbolic pairs, reduced on the fly), where
  ``pykeops`` is importable.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
import torch.utils.checkpoint

from fastrel import activations, reference

Tensor = torch.Tensor
Impl = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Tensor]

PEERS = ("reference", "compiled", "chunked", "keops")


def unavailable(name: str) -> str | None:
    """None when peer ``name`` can run here, else why not."""
    if name not in PEERS:
        raise ValueError(f"name: expected one of {list(PEERS)}, got {name!r}")
    if name == "keops":
        if importlib.util.find_spec("pykeops") is None:
            return "pykeops is not installed"
        try:
            import pykeops  # noqa: F401
        except Exception as error:  # a broken install must read as a reason
            return f"pykeops does not import: {type(error).__name__}: {error}"
    return None


def build(name: str, inner: str, outer: str, *, chunk_budget_bytes: int = 256 << 20) -> Impl:
    """The function that computes ``global_relation`` the way peer ``name`` does."""
    reason = unavailable(name)
    if reason is not None:
        raise ValueError(f"name: peer {name!r} is unavailable: {reason}")
    if name == "reference":
        return functools.partial(_reference, inner=inner, outer=outer)
    if name == "compiled":
        compiled = torch.compile(reference.global_relation, dynamic=False)
        return functools.partial(_reference, inner=inner, outer=outer, fn=compiled)
    if name == "chunked":
        return functools.partial(_chunked, inner=inner, outer=outer, budget=chunk_budget_bytes)
    return functools.partial(_keops, inner=inner, outer=outer)


def pair_bytes_per_row(B: int, M: int, H: int, R: int, element_size: int) -> int:
    """Bytes of the reference's forward intermediates for one row i: differences, p, z, z + β, r."""
    return B * M * (2 * H + 3 * R) * element_size


def chunk_rows(B: int, N: int, M: int, H: int, R: int, element_size: int, budget: int) -> int:
    """Rows of i per chunk so that one chunk's forward intermediates fit in ``budget`` bytes."""
    return max(1, min(N, budget // pair_bytes_per_row(B, M, H, R, element_size)))


def predicted_peak_bytes(
    name: str, B: int, N: int, M: int, H: int, R: int, element_size: int, backward: bool, chunk_budget: int
) -> int:
    """An estimate, on the high side, of the peak memory above the inputs, to skip cases over budget.

    The reference's forward holds two (B, N, M, H) tensors at once (the differences and p) and
    R-wide ones after; forward + backward keeps p for the matmul's backward and creates gradients
    of p and of the differences. ``compiled`` fuses the element-wise parts but still materialises p,
    so it is bounded by the reference. ``chunked`` holds one chunk's worth; ``keops`` holds no pairs.
    """
    small = (B * (N + M) * H + B * N * R + R * H) * element_size * (4 if backward else 2)
    per_pair = (3 * H + 2 * R) if backward else (2 * H + R)
    if name in ("reference", "compiled"):
        return B * N * M * per_pair * element_size + small
    if name == "chunked":
        rows = chunk_rows(B, N, M, H, R, element_size, chunk_budget)
        return B * rows * M * per_pair * element_size + small
    return small


def _reference(a, b, weight, bias, key_mask, *, inner, outer, fn=reference.global_relation):
    return fn(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)


def _chunked(a, b, weight, bias, key_mask, *, inner, outer, budget):
    """Rows of g are independent, so g is the reference applied to row chunks of a, concatenated."""
    B, N, H = a.shape
    rows = chunk_rows(B, N, b.shape[1], H, weight.shape[0], a.element_size(), budget)
    step = functools.partial(reference.global_relation, inner=inner, outer=outer, key_mask=key_mask)
    inputs = (a, b, weight, bias)
    remember = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    pieces = []
    for start in range(0, N, rows):
        chunk = a[:, start : start + rows]
        if remember:
            piece = torch.utils.checkpoint.checkpoint(step, chunk, b, weight, bias, use_reentrant=False)
            pieces.append(piece)
        else:
            pieces.append(step(chunk, b, weight, bias))
    return torch.cat(pieces, dim=1)


def _keops_activation(x, name: str):
    if name == "relu":
        return x.relu()
    if name == "leaky_relu":
        return x.relu() - activations.LEAKY_SLOPE * (-x).relu()
    if name == "abs":
        return x.abs()
    if name == "identity":
        return x
    raise ValueError(f"activation: expected one of {list(activations.CODES)}, got {name!r}")


def _keops(a, b, weight, bias, key_mask, *, inner, outer):
    """Pairs as a symbolic (B, N, M) LazyTensor; W_r p_ij is KeOps' row-major MatVecMult."""
    from pykeops.torch import LazyTensor

    R, H = weight.shape
    a_i = LazyTensor(a[:, :, None, :])  # (B, N, 1, H)
    b_j = LazyTensor(b[:, None, :, :])  # (B, 1, M, H)
    w = LazyTensor(weight.reshape(1, 1, 1, R * H))
    z = w.matvecmult(_keops_activation(a_i - b_j, inner))  # (B, N, M, R)
    if bias is not None:
        z = z + LazyTensor(bias.reshape(1, 1, 1, R))
    r = _keops_activation(z, outer)
    if key_mask is None:
        return r.sum(dim=2) / b.shape[1]
    m = key_mask.to(a.dtype)
    r = r * LazyTensor(m[:, None, :, None])
    return r.sum(dim=2) / m.sum(dim=1).clamp(min=1)[:, None, None]
