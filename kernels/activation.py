"""The activations δ and σ and their derivatives inside Triton kernels (codes of fastrel.activations).

Kink conventions as in docs/math.md: relu'(0) = abs'(0) = 0, leaky_relu'(0) = slope. NaN behaves as
in PyTorch: every activation maps NaN to NaN, and the derivatives at NaN are those of autograd
(relu' = 1, leaky_relu' = slope, abs' = 0), so a NaN input gives the reference's NaN pattern.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from fastrel import activations
from fastrel.kernels import interpreting
from fastrel.kernels.rounding import round_to

LEAKY_SLOPE: tl.constexpr = tl.constexpr(activations.LEAKY_SLOPE)
RELU: tl.constexpr = tl.constexpr(activations.CODES["relu"])
LEAKY_RELU: tl.constexpr = tl.constexpr(activations.CODES["leaky_relu"])
ABS: tl.constexpr = tl.constexpr(activations.CODES["abs"])
#: Compiled for a GPU, not run by the interpreter: inline PTX is available.
INLINE_PTX: tl.constexpr = tl.constexpr(not interpreting())
_SLOPE_BITS = struct.unpack("<I", struct.pack("<f", activations.LEAKY_SLOPE))[0]
#: leaky_relu(a − b) of two packed values: the difference rounded once, each value times the fp32
#: slope and rounded back, then max(d, slope·d) (NaN kept), as activation() forms it.
BF16_LEAKY_PAIR: tl.constexpr = tl.constexpr(
    "{ .reg .b32 m, d, s, l, h; mov.b32 m, 0xBF80BF80; fma.rn.bf16x2 d, $2, m, $1; "
    f"shl.b32 l, d, 16; and.b32 h, d, 0xFFFF0000; mul.f32 l, l, 0f{_SLOPE_BITS:08X}; "
    f"mul.f32 h, h, 0f{_SLOPE_BITS:08X}; cvt.rn.bf16x2.f32 s, h, l; max.NaN.bf16x2 $0, d, s; }}"
)
F16_LEAKY_PAIR: tl.constexpr = tl.constexpr(
    "{ .reg .b32 m, d, s; .reg .b16 dl, dh; .reg .f32 l, h; mov.b32 m, 0xBC00BC00; "
    "fma.rn.f16x2 d, $2, m, $1; mov.b32 {dl, dh}, d; cvt.f32.f16 l, dl; cvt.f32.f16 h, dh; "
    f"mul.f32 l, l, 0f{_SLOPE_BITS:08X}; mul.f32 h, h, 0f{_SLOPE_BITS:08X}; cvt.rn.f16x2.f32 s, h, l; "
    "max.NaN.f16x2 $0, d, s; }"
)


@triton.jit
def activation(x, CODE: tl.constexpr):
    """δ(x) or σ(x), NaN passing through: relu is a NaN-propagating max (one packed max.NaN per two
    half-precision values), leaky_relu a NaN-propagating max(x, slope·x)."""
    if CODE == RELU:
        y = tl.maximum(x, tl.zeros(x.shape, x.dtype), propagate_nan=tl.PropagateNan.ALL)
    elif CODE == LEAKY_RELU:
        y = _leaky_relu(x)
    elif CODE == ABS:
        y = tl.abs(x)
    else:
        y = x
    return y


@triton.jit
def _leaky_relu(x):
    """max(x, slope·x), leaky_relu for a slope below 1 (two instructions, NaN kept); bf16/fp16 take
    the product in fp32 and round it to their dtype, as PyTorch does."""
    if x.dtype == tl.bfloat16 or x.dtype == tl.float16:
        wide = x.to(tl.float32)
        y = round_to(tl.maximum(wide, wide * LEAKY_SLOPE, propagate_nan=tl.PropagateNan.ALL), x.dtype)
    else:
        y = tl.maximum(x, x * tl.full(x.shape, LEAKY_SLOPE, x.dtype), propagate_nan=tl.PropagateNan.ALL)
    return y


@triton.jit
def pair_activation(a, b, CODE: tl.constexpr, DTYPE: tl.constexpr):
    """δ(a − b) in the dtype of a and b, broadcast against each other. relu on bf16 or fp16 is one
    fused fma.rn.relu (b·(−1) + a, rounded once as the subtraction is, NaN kept) per two values, where
    Triton 3.6 would subtract, widen each value to fp32, take the max and narrow again: four to five
    instructions per two values in the forward's key loop. leaky_relu takes seven per two values
    (Triton's own code about nine: it widens both operands of the max). The difference is rounded
    to DTYPE, the inputs' dtype, as the reference's is (a no-op on GPUs; under the interpreter the
    kernels hold half-precision operands in fp32)."""
    if INLINE_PTX and (CODE == RELU or CODE == LEAKY_RELU) and (a.dtype == tl.bfloat16 or a.dtype == tl.float16):
        if CODE == LEAKY_RELU:
            asm: tl.constexpr = BF16_LEAKY_PAIR if a.dtype == tl.bfloat16 else F16_LEAKY_PAIR
        elif a.dtype == tl.bfloat16:
            asm: tl.constexpr = "{ .reg .b32 m; mov.b32 m, 0xBF80BF80; fma.rn.relu.bf16x2 $0, $2, m, $1; }"
        else:
            asm: tl.constexpr = "{ .reg .b32 m; mov.b32 m, 0xBC00BC00; fma.rn.relu.f16x2 $0, $2, m, $1; }"
        y = tl.inline_asm_elementwise(asm, "=r,r,r", [a, b], dtype=a.dtype, is_pure=True, pack=2)
    else:
        y = activation(round_to(a - b, DTYPE).to(a.dtype), CODE)
    return y


@triton.jit
def derivative(x, CODE: tl.constexpr):
    """δ'(x) or σ'(x). Constants are built in x's dtype: a float literal would be rounded to fp32 first."""
    one = tl.full(x.shape, 1.0, x.dtype)
    zero = tl.zeros(x.shape, x.dtype)
    if CODE == RELU:
        y = tl.where(x <= 0, zero, one)
    elif CODE == LEAKY_RELU:
        y = tl.where(x > 0, one, tl.full(x.shape, LEAKY_SLOPE, x.dtype))
    elif CODE == ABS:
        y = tl.where(x > 0, one, tl.where(x < 0, -one, zero))
    else:
        y = one
    return y


@triton.jit
def backprop(x, grad, CODE: tl.constexpr):
    """grad ⊙ f'(x) as PyTorch's autograd forms it: relu and leaky_relu select (a NaN or inf in grad
    stays out of entries where f' = 0), abs multiplies by sign(x)."""
    if CODE == RELU:
        y = tl.where(x <= 0, tl.zeros(grad.shape, grad.dtype), grad)
    elif CODE == LEAKY_RELU:
        y = tl.where(x > 0, grad, grad * tl.full(grad.shape, LEAKY_SLOPE, grad.dtype))
    elif CODE == ABS:
        y = grad * derivative(x, CODE).to(grad.dtype)
    else:
        y = grad
    return y
