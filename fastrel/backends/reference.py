"""The ``reference`` backend: the materialising oracle, with its gradients from autograd."""

from __future__ import annotations

import torch

from fastrel import reference
from fastrel.backends.base import Backend

FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def forward(a, b, weight, bias, key_mask, inner, outer):
    return reference.global_relation(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)


def backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic):
    leaves = [t.detach().requires_grad_() for t in (a, b, weight)]
    bias_leaf = (
        bias.detach().requires_grad_()
        if bias is not None
        else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device, requires_grad=True)
    )
    with torch.enable_grad():
        out = reference.global_relation(*leaves, bias_leaf, inner=inner, outer=outer, key_mask=key_mask)
        return torch.autograd.grad(out, [*leaves, bias_leaf], grad)


BACKEND = Backend(
    name="reference",
    summary="plain PyTorch, materialises every pair (B·N·M·H memory)",
    devices=("cpu", "cuda"),
    dtypes=FLOATS,
    forward=forward,
    backward=backward,
)
