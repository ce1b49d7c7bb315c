"""The `cpu` backend: fused C++ kernels (csrc/global_relation_cpu.cpp) from fastrel._C.

Tiles of pairs are formed and reduced on per-thread scratch, so memory stays O(B·N·H) instead of
the reference's O(B·N·M·H). Reductions run in a fixed order: results are deterministic always.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastrel.activations import CODES
from fastrel.backends.base import Backend

Tensor = torch.Tensor


def _native():
    from fastrel import _C

    return _C


def _probe() -> Optional[str]:
    try:
        _native()
    except ImportError as error:
        return f"fastrel._C is not built: {error}"
    return None


def _forward(
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    key_mask: Optional[Tensor],
    inner: str,
    outer: str,
) -> Tensor:
    return _native().global_relation_forward_cpu(a, b, weight, bias, key_mask, CODES[inner], CODES[outer])


def _backward(
    grad: Tensor,
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    key_mask: Optional[Tensor],
    inner: str,
    outer: str,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    da, db, dweight, dbias = _native().global_relation_backward_cpu(
        grad, a, b, weight, bias, key_mask, CODES[inner], CODES[outer], deterministic
    )
    return da, db, dweight, dbias


BACKEND = Backend(
    name="cpu",
    summary="fused C++ kernels, tiled over pairs, O(B·N·H) memory, deterministic",
    devices=("cpu",),
    dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
    forward=_forward,
    backward=_backward,
    probe=_probe,
    deterministic=True,
)
