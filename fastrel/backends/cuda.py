"""Placeholder for the `cuda` backend (being written)."""

import torch

from fastrel.backends.base import Backend


def _todo(*args, **kwargs):
    raise NotImplementedError


BACKEND = Backend(
    name="cuda",
    summary="not written yet",
    devices=("cpu",),
    dtypes=(torch.float32,),
    forward=_todo,
    backward=_todo,
    probe=lambda: "not written yet",
)
