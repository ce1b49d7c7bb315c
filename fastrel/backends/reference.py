"""The ``reference`` backend: the materialising oracle and its written-out backward."""

from __future__ import annotations

from fastrel import reference
from fastrel.backends.base import Backend


def forward(a, b, weight, bias, key_mask, inner, outer):
    return reference.global_relation(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)


BACKEND = Backend(
    name="reference",
    summary="plain PyTorch, materialises every pair (B·N·M·H memory)",
    forward=forward,
    backward=reference.global_relation_backward,
)
