"""The public operator ``global_relation``: argument checks, backend dispatch, autograd.

The work is one ``torch.library`` custom op with a registered fake (shape) implementation and a
registered backward, so ``torch.compile(fullgraph=True)`` traces models that use it; plain eager
calls skip the op's dispatcher wrapper and run the same backend function. Dispatch happens before
the op is called: the op receives the name of the backend that runs it.

Autograd: reverse mode (``.backward()``, ``torch.autograd.grad``, ``torch.func.grad``/``vjp``/
``jacrev``) through an ``autograd.Function`` around the op, which the ``torch.func`` transforms
accept. Forward mode and second derivatives raise an error that says so: the kernels have no
tangent rule and their backward has no derivative of its own.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from fastrel import activations, backends, checks

Tensor = torch.Tensor

SUPPORTED = (
    "reverse-mode autograd (.backward(), torch.autograd.grad, torch.func.grad/vjp/jacrev) and "
    "torch.compile are supported"
)


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
    checks.inputs(a, b, weight, bias, key_mask)
    inner = checks.activation(inner, activations.INNER, "inner")
    outer = checks.activation(outer, activations.OUTER, "outer")
    checks.backend(backend)
    if checks.deterministic(deterministic) is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    shape = backends.Shape(a.shape[1], b.shape[1], a.shape[2], weight.shape[0])
    name = _select(backend, a.device.type, a.dtype, inner, outer, bool(deterministic), shape)
    weight = weight.to(a.dtype).contiguous()
    bias = bias.to(a.dtype).contiguous() if bias is not None else None
    key_mask = key_mask.contiguous() if key_mask is not None else None
    inputs = (a.contiguous(), b.contiguous(), weight, bias, key_mask, inner, outer, name, bool(deterministic))
    if torch.compiler.is_compiling():  # the op itself: its registered autograd is what AOTAutograd traces
        return _global_relation(*inputs)
    return _GlobalRelation.apply(*inputs)


@torch.compiler.assume_constant_result
def _select(backend: str, device: str, dtype: torch.dtype, inner: str, outer: str, deterministic: bool,
            shape: backends.Shape) -> str:
    return backends.select(backend, device, dtype, inner, outer, deterministic, shape)


#: The inputs both ops take, after the backward's ``grad``: one schema, so the two cannot drift apart.
_INPUTS = (
    "Tensor a, Tensor b, Tensor weight, Tensor? bias, Tensor? key_mask, str inner, str outer, str backend, "
    "bool deterministic"
)


def _forward(a, b, weight, bias, key_mask, inner, outer, backend, deterministic) -> Tensor:
    return backends.get(backend).forward(a, b, weight, bias, key_mask, inner, outer)


def _backward_pass(grad, a, b, weight, bias, key_mask, inner, outer, backend, deterministic):
    return backends.get(backend).backward(grad.contiguous(), a, b, weight, bias, key_mask, inner, outer, deterministic)


def _direct(a: Tensor) -> bool:
    """Whether an eager call runs its backend directly instead of through the custom op, whose
    dispatcher wrapper cost about 0.2 ms of host time per call on an H200 host (benchmarks/RESULTS.md,
    run 5), more than an RGTR clip batch's kernels take: not for tensor subclasses, under
    torch.func transforms (the op's vmap rule) or under dispatch modes (fake tensors, tracing)."""
    return (
        type(a) is Tensor
        and not torch._C._are_functorch_transforms_active()
        and _get_current_dispatch_mode() is None
    )


_global_relation = torch.library.custom_op(
    "fastrel::global_relation", _forward, mutates_args=(), schema=f"({_INPUTS}) -> Tensor"
)


@_global_relation.register_fake
def _(a, b, weight, bias, key_mask, inner, outer, backend, deterministic):
    return a.new_empty(a.shape[0], a.shape[1], weight.shape[0])


_global_relation_backward = torch.library.custom_op(
    "fastrel::global_relation_backward",
    _backward_pass,
    mutates_args=(),
    schema=f"(Tensor grad, {_INPUTS}) -> (Tensor, Tensor, Tensor, Tensor)",
)


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
    inputs = (grad, a, b, weight, bias, key_mask, *ctx.options)
    if torch.compiler.is_compiling():
        da, db, dweight, dbias = _global_relation_backward(*inputs)
    elif not torch.is_grad_enabled() and _direct(grad):  # no graph is built: nothing to refuse later
        da, db, dweight, dbias = _backward_pass(*inputs)
    else:
        da, db, dweight, dbias = _GlobalRelationBackward.apply(*inputs)
    return da, db, dweight, (dbias if ctx.has_bias else None), None, None, None, None, None


# Direct callers of torch.ops.fastrel.global_relation get the same backward.
_global_relation.register_autograd(_backward, setup_context=_setup_context)


def _vmap_by_loop(op):
    """A vmap rule (torch.func.vmap, jacrev) that runs ``op`` once per entry of the vmapped dim."""

    def rule(info, in_dims, *inputs):
        results = []
        for k in range(info.batch_size):
            entry = [x.select(d, k) if d is not None else x for x, d in zip(inputs, in_dims)]
            results.append(op(*entry))
        if isinstance(results[0], Tensor):
            return torch.stack(results), 0
        return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * len(results[0])

    op.register_vmap(rule)


_vmap_by_loop(_global_relation)
_vmap_by_loop(_global_relation_backward)


def _no_forward_mode(ctx, *tangents):
    raise NotImplementedError(
        "global_relation: forward-mode AD (torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad) "
        f"is not supported; {SUPPORTED}"
    )


class _GlobalRelation(torch.autograd.Function):
    """The op with its registered backward, in the form torch.func transforms accept (setup_context);
    plain eager calls run the backend directly (_direct).

    Eager only: under torch.compile the op is called directly (dynamo does not trace a custom jvp).
    """

    generate_vmap_rule = True  # vmap runs the op's own rule

    @staticmethod
    def forward(*inputs):
        return _forward(*inputs) if _direct(inputs[0]) else _global_relation(*inputs)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
    jvp = staticmethod(_no_forward_mode)


class _GlobalRelationBackward(torch.autograd.Function):
    """The backward op, differentiable only to say that second derivatives are not supported."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs):
        return _backward_pass(*inputs) if _direct(inputs[1]) else _global_relation_backward(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "global_relation: second derivatives (double backward, torch.func.hessian) are not "
            f"supported; first-order {SUPPORTED}"
        )

    jvp = staticmethod(_no_forward_mode)
