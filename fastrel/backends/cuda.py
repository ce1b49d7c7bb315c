"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/global_relation_cuda.cu`` through ``fastrel._C``.

WMMA tensor cores for bfloat16/float16 (fp32 accumulation), plain fp32 and fp64 FMA otherwise; every
outer activation runs through the same pair kernels (``auto`` sends outer = identity to ``sort``, the
exact fast path). For sets of at most 64 items (clips) the backward runs one block per clip, which
forms da, db and [dW | dβ] in one launch, in a fixed order, without atomics. Larger sets:
deterministic without atomics when asked (a row pass for da and [dW | dβ], a key pass for db), else
one pass with atomics.

Its role: the better kernel for small sets and fp64, not for large sets in 16-bit or fp32, where
Triton's larger tensor-core tiles win (``PREFERRED`` says why; a static estimate until a GPU has run).
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
        "small sets (RGTR clips): the backward runs one block per clip, forming da, db and [dW | dβ] in "
        "one launch with fixed-order sums, no key pass and no atomics; Triton's tiles of >= 64 pairs "
        "would be mostly padding (static estimate, not yet measured on a GPU)",
        devices=("cuda",),
        max_items=SMALL_SET_ITEMS,
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
