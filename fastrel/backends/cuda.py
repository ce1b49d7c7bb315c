"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/global_relation_cuda.cu`` through ``fastrel._C``.

Tensor cores for bfloat16/float16 (fp32 accumulation), plain fp32 and fp64 FMA otherwise; the
outer = identity case takes the exact fast path. The backward is deterministic without atomics
when asked (a row pass for da and [dW | dβ], a column pass for db), else one pass with atomics.
"""

from __future__ import annotations

import torch

from fastrel import activations
from fastrel.backends.base import Backend

Tensor = torch.Tensor


def _native():
    from fastrel import _C

    return _C


def probe() -> str | None:
    """None when the CUDA kernels are built and a CUDA device is present, else why not."""
    try:
        native = _native()
    except ImportError as error:
        return f"fastrel._C is not built ({error})"
    if not getattr(native, "cuda", False):
        return "fastrel._C was built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def forward(
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    key_mask: Tensor | None,
    inner: str,
    outer: str,
) -> Tensor:
    return _native().global_relation_forward_cuda(
        a, b, weight, bias, key_mask, activations.CODES[inner], activations.CODES[outer]
    )


def backward(
    grad: Tensor,
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    key_mask: Tensor | None,
    inner: str,
    outer: str,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    da, db, dweight, dbias = _native().global_relation_backward_cuda(
        grad, a, b, weight, bias, key_mask, activations.CODES[inner], activations.CODES[outer], deterministic
    )
    return da, db, dweight, dbias


BACKEND = Backend(
    name="cuda",
    summary="CUDA C++ kernels: tensor cores for bf16/fp16, FMA for fp32/fp64, deterministic backward",
    devices=("cuda",),
    dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
    forward=forward,
    backward=backward,
    probe=probe,
)
