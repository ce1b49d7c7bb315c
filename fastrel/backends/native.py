"""The kernels of fastrel._C, as the forward/backward pair a backend declares (cpu, cuda)."""

from __future__ import annotations

from types import ModuleType

import torch

from fastrel.activations import CODES
from fastrel.backends.base import Backward, Forward

Tensor = torch.Tensor


def module() -> ModuleType:
    """fastrel._C; raises ImportError when the extension is not built."""
    from fastrel import _C

    return _C


def kernels(device: str) -> tuple[Forward, Backward]:
    """forward/backward calling ``fastrel._C.global_relation_{forward,backward}_<device>``."""

    def forward(a, b, weight, bias, key_mask, inner, outer) -> Tensor:
        run = getattr(module(), f"global_relation_forward_{device}")
        return run(a, b, weight, bias, key_mask, CODES[inner], CODES[outer])

    def backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic) -> tuple[Tensor, ...]:
        run = getattr(module(), f"global_relation_backward_{device}")
        return tuple(run(grad, a, b, weight, bias, key_mask, CODES[inner], CODES[outer], deterministic))

    return forward, backward
