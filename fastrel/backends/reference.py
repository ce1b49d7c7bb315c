"""The ``reference`` backend: the materialising oracle and its written-out backward."""

from __future__ import annotations

import torch

from fastrel import reference
from fastrel.backends.base import SMALL_SET_ITEMS, Backend, Preference


def forward(a, b, weight, bias, key_mask, inner, outer):
    return reference.global_relation(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)


BACKEND = Backend(
    name="reference",
    summary="plain PyTorch, materialises every pair (B·N·M·H memory)",
    forward=forward,
    backward=reference.global_relation_backward,
    preferred=(
        Preference(
            "fp32 (IEEE) clips: a clip's pairs are few, and cuBLAS's fp32 products were measured on an H200 "
            "at 0.9-1x (T = 8, host-bound) and 1.7-2.8x (T = 16-32) the speed of the fused kernels' FMA tiles",
            devices=("cuda",),
            dtypes=(torch.float32,),
            max_items=SMALL_SET_ITEMS,
            tf32=False,
        ),
    ),
)
