"""The activations δ and σ and their derivatives inside Triton kernels (codes of fastrel.activations).

Kink conventions as in docs/math.md: relu'(0) = abs'(0) = 0, leaky_relu'(0) = slope. NaN behaves as
in PyTorch: every activation maps NaN to NaN, and the derivatives at NaN are those of autograd
(relu' = 1, leaky_relu' = slope, abs' = 0), so a NaN input gives the reference's NaN pattern.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastrel import activations
from fastrel.kernels import interpreting

LEAKY_SLOPE: tl.constexpr = tl.constexpr(activations.LEAKY_SLOPE)
RELU: tl.constexpr = tl.constexpr(activations.CODES["relu"])
LEAKY_RELU: tl.constexpr = tl.constexpr(activations.CODES["leaky_relu"])
ABS: tl.constexpr = tl.constexpr(activations.CODES["abs"])
#: Compiled for a GPU, not run by the interpreter: inline PTX is available.
INLINE_PTX: tl.constexpr = tl.constexpr(not interpreting())


@triton.jit
def activation(x, CODE: tl.constexpr):
    """δ(x) or σ(x), NaN passing through: relu is a NaN-propagating max (one packed max.NaN per two
    half-precision values), leaky_relu is "x unless x < 0" (NaN is never < 0)."""
    if CODE == RELU:
        y = tl.maximum(x, tl.zeros(x.shape, x.dtype), propagate_nan=tl.PropagateNan.ALL)
    elif CODE == LEAKY_RELU:
        y = tl.where(x < 0, x * tl.full(x.shape, LEAKY_SLOPE, x.dtype), x)
    elif CODE == ABS:
        y = tl.abs(x)
    else:
        y = x
    return y


@triton.jit
def pair_activation(a, b, CODE: tl.constexpr):
    """δ(a − b) in the dtype of a and b, broadcast against each other. relu on bf16 or fp16 is one
    fused fma.rn.relu (b·(−1) + a, rounded once as the subtraction is, NaN kept) per two values, where
    Triton 3.6 would subtract, widen each value to fp32, take the max and narrow again: four to five
    instructions per two values in the forward's key loop."""
    if INLINE_PTX and CODE == RELU and (a.dtype == tl.bfloat16 or a.dtype == tl.float16):
        if a.dtype == tl.bfloat16:
            asm: tl.constexpr = "{ .reg .b32 m; mov.b32 m, 0xBF80BF80; fma.rn.relu.bf16x2 $0, $2, m, $1; }"
        else:
            asm: tl.constexpr = "{ .reg .b32 m; mov.b32 m, 0xBC00BC00; fma.rn.relu.f16x2 $0, $2, m, $1; }"
        y = tl.inline_asm_elementwise(asm, "=r,r,r", [a, b], dtype=a.dtype, is_pure=True, pack=2)
    else:
        y = activation(a - b, CODE)
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
