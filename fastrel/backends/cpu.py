"""The `cpu` backend: fused C++ kernels (csrc/global_relation_cpu.cpp) from fastrel._C.

Tiles of pairs are formed and reduced on per-thread scratch, so memory stays O(B·N·H) instead of
the reference's O(B·N·M·H). Reductions run in a fixed order: results are deterministic always.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastrel.backends import native
from fastrel.backends.base import Backend


def _probe() -> Optional[str]:
    try:
        native.module()
    except ImportError as error:
        return f"fastrel._C is not built: {error}"
    return None


_forward, _backward = native.kernels("cpu")

BACKEND = Backend(
    name="cpu",
    summary="fused C++ kernels, tiled over pairs, O(B·N·H) memory, deterministic",
    devices=("cpu",),
    dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
    forward=_forward,
    backward=_backward,
    probe=_probe,
    deterministic=True,
)
