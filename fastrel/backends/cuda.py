"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/global_relation_cuda.cu`` through ``fastrel._C``.

Tensor cores for bfloat16/float16 (fp32 accumulation), plain fp32 and fp64 FMA otherwise; the
outer = identity case takes the exact fast path. The backward is deterministic without atomics
when asked (a row pass for da and [dW | dβ], a column pass for db), else one pass with atomics.
"""

from __future__ import annotations

import torch

from fastrel.backends import native
from fastrel.backends.base import Backend


def probe() -> str | None:
    """None when the CUDA kernels are built and a CUDA device is present, else why not."""
    try:
        module = native.module()
    except ImportError as error:
        return f"fastrel._C is not built ({error})"
    if not getattr(module, "cuda", False):
        return "fastrel._C was built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


forward, backward = native.kernels("cuda")

BACKEND = Backend(
    name="cuda",
    summary="CUDA C++ kernels: tensor cores for bf16/fp16, FMA for fp32/fp64, deterministic backward",
    devices=("cuda",),
    dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
    forward=forward,
    backward=backward,
    probe=probe,
)
