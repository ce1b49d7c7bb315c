"""The public operator ``global_relation``: argument checks, backend dispatch, autograd.

The work is one ``torch.library`` custom op with a registered fake (shape) implementation and a
registered backward, so ``torch.compile(fullgraph=True)`` traces models that use it. Dispatch
happens before the op is called: the op receives the name of the backend that runs it.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastrel import activations, backends

Tensor = torch.Tensor

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def global_relation(
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    inner: str = "relu",
    outer: str = "relu",
    key_mask: Optional[Tensor] = None,
    backend: str = "auto",
    deterministic: Optional[bool] = None,
) -> Tensor:
    """Global relation vectors g_i = Σ_j m_j σ(W_r δ(a_i − b_j) + β_r) / max(Σ_j m_j, 1).

    a: (B, N, H) queries, b: (B, M, H) keys, weight: (R, H), bias: (R,), key_mask: (B, M) bool
    (True = key j takes part). Returns (B, N, R) in a's dtype; rows with no valid key are zero.
    ``deterministic=None`` follows ``torch.are_deterministic_algorithms_enabled()``.
    """
    _check(a, b, weight, bias, key_mask)
    inner = activations.check_name(inner, activations.INNER, "inner")
    outer = activations.check_name(outer, activations.OUTER, "outer")
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    shape = backends.Shape(a.shape[1], b.shape[1], a.shape[2], weight.shape[0])
    name = _select(backend, a.device.type, a.dtype, inner, outer, bool(deterministic), shape)
    weight = weight.to(a.dtype).contiguous()
    bias = bias.to(a.dtype).contiguous() if bias is not None else None
    key_mask = key_mask.contiguous() if key_mask is not None else None
    return _global_relation(
        a.contiguous(), b.contiguous(), weight, bias, key_mask, inner, outer, name, bool(deterministic)
    )


@torch.compiler.assume_constant_result
def _select(backend: str, device: str, dtype: torch.dtype, inner: str, outer: str, deterministic: bool,
            shape: backends.Shape) -> str:
    return backends.select(backend, device, dtype, inner, outer, deterministic, shape)


def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {str(t.dtype).removeprefix('torch.')}, device {t.device}"


def _check(a, b, weight, bias, key_mask) -> None:
    """Raise TypeError/ValueError naming the argument, what was expected and what came."""
    for name, t in (("a", a), ("b", b), ("weight", weight), ("bias", bias), ("key_mask", key_mask)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    for name, t in (("a", a), ("b", b), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected a floating dtype (float64/32, bfloat16, float16), got {t.dtype}")
    if a.dim() != 3:
        raise ValueError(f"a: expected shape (B, N, H), got {_describe(a)}")
    B, _, H = a.shape
    if b.dim() != 3 or b.shape[0] != B or b.shape[2] != H:
        raise ValueError(f"b: expected shape ({B}, M, {H}) to match a, got {_describe(b)}")
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected dtype {a.dtype} to match a, got {b.dtype}")
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight: expected shape (R, {H}), got {_describe(weight)}")
    R = weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != R):
        raise ValueError(f"bias: expected shape ({R},), got {_describe(bias)}")
    if key_mask is not None:
        if key_mask.dtype != torch.bool:
            raise TypeError(f"key_mask: expected dtype torch.bool, got {key_mask.dtype}")
        if tuple(key_mask.shape) != (B, b.shape[1]):
            raise ValueError(f"key_mask: expected shape {(B, b.shape[1])}, got {_describe(key_mask)}")
    for name, t in (("b", b), ("weight", weight), ("bias", bias), ("key_mask", key_mask)):
        if t is not None and t.device != a.device:
            raise ValueError(f"{name}: expected device {a.device} to match a, got {t.device}")


@torch.library.custom_op("fastrel::global_relation", mutates_args=())
def _global_relation(
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    key_mask: Optional[Tensor],
    inner: str,
    outer: str,
    backend: str,
    deterministic: bool,
) -> Tensor:
    return backends.get(backend).forward(a, b, weight, bias, key_mask, inner, outer)


@_global_relation.register_fake
def _(a, b, weight, bias, key_mask, inner, outer, backend, deterministic):
    return a.new_empty(a.shape[0], a.shape[1], weight.shape[0])


@torch.library.custom_op("fastrel::global_relation_backward", mutates_args=())
def _global_relation_backward(
    grad: Tensor,
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    key_mask: Optional[Tensor],
    inner: str,
    outer: str,
    backend: str,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    da, db, dweight, dbias = backends.get(backend).backward(
        grad.contiguous(), a, b, weight, bias, key_mask, inner, outer, deterministic
    )
    return da, db, dweight, dbias


@_global_relation_backward.register_fake
def _(grad, a, b, weight, bias, key_mask, inner, outer, backend, deterministic):
    return (
        torch.empty_like(a),
        torch.empty_like(b),
        torch.empty_like(weight),
        weight.new_empty(weight.shape[0]),
    )


def _setup_context(ctx, inputs, output):
    a, b, weight, bias, key_mask, inner, outer, backend, deterministic = inputs
    ctx.save_for_backward(a, b, weight, bias, key_mask)
    ctx.options = (inner, outer, backend, deterministic)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    a, b, weight, bias, key_mask = ctx.saved_tensors
    da, db, dweight, dbias = _global_relation_backward(grad, a, b, weight, bias, key_mask, *ctx.options)
    return da, db, dweight, (dbias if ctx.has_bias else None), None, None, None, None, None


_global_relation.register_autograd(_backward, setup_context=_setup_context)
