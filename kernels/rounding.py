"""Rounding to a kernel's dtype as GPUs round, also under the Triton interpreter."""

from __future__ import annotations

import triton
import triton.language as tl

from fastrel.kernels import interpreting

#: The interpreter converts fp32 to bf16 by truncation (GPUs round to nearest even), which biases
#: every rounded product operand; there round_to rounds on the bits instead.
BF16_BY_BITS: tl.constexpr = tl.constexpr(interpreting())


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """x rounded to DTYPE, to nearest even as on GPUs (and in PyTorch), also under the interpreter."""
    if BF16_BY_BITS:
        if DTYPE == tl.bfloat16:
            x = x.to(tl.float32)
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))  # NaN stays NaN
    return x.to(DTYPE)
