"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/global_relation_cuda.cu`` through ``fastrel._C``.

WMMA tensor cores for bfloat16/float16 (fp32 accumulation), plain fp32 and fp64 FMA otherwise; every
outer activation runs through the same pair kernels (``auto`` sends outer = identity to ``sort``, the
exact fast path). For sets of at most 64 items (clips) the backward runs one block per clip, which
forms da, db and [dW | dβ] in one launch, in a fixed order, without atomics. Larger sets:
deterministic without atomics when asked (a row pass for da and [dW | dβ], a key pass for db), else
one pass with atomics.

Its role, from H200 timings (benchmarks/RESULTS.md, "H200"): fp32 without TF32 on sets larger than
a clip, and fp64. In bf16/fp16 its WMMA tiles are 7-20x slower than Triton's, and for clips Triton
(bf16) or the reference (fp32) is faster (``PREFERRED`` says why).
"""

from __future__ import annotations

import torch

from fastrel.backends import native
from fastrel.backends.base import SMALL_SET_ITEMS, Preference


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


PREFERRED = (
    Preference(
        "fp32 (IEEE) sets larger than a clip: measured on an H200 faster than the Triton kernels' fp32 "
        "FMA tiles (fwd+bwd 1.13x at the paper shape, 1.6x at N = 1024), at under 1/100 of the "
        "reference's memory",
        devices=("cuda",),
        dtypes=(torch.float32,),
        min_items=SMALL_SET_ITEMS + 1,
        tf32=False,
    ),
    Preference(
        "fp64: the Triton backend runs no fp64 on the GPU; these kernels do plain fp64 FMA",
        devices=("cuda",),
        dtypes=(torch.float64,),
    ),
)

BACKEND = native.backend(
    "cuda",
    summary="CUDA C++ kernels: WMMA for bf16/fp16, FMA for fp32/fp64, one-block-per-clip deterministic backward",
    probe=probe,
    preferred=PREFERRED,
)
