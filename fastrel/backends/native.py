"""The one way into fastrel._C, and the kernels it holds as the forward/backward pair a backend declares.

The extension exports the activation codes it was compiled with (csrc/relation_math.h); a build
whose codes differ from fastrel/activations.py CODES would run the wrong activations, so it counts
as unavailable, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Optional

import torch

from fastrel.activations import CODES
from fastrel.backends.base import Backend, Backward, Forward

Tensor = torch.Tensor


def _import() -> ModuleType:
    from fastrel import _C

    return _C


def _mismatch(extension: ModuleType) -> Optional[str]:
    codes = getattr(extension, "ACTIVATION_CODES", None)
    if codes == CODES:
        return None
    return (
        f"fastrel._C was built with activation codes {codes}, fastrel.activations has {CODES}: "
        "rebuild it (python setup.py build_ext --inplace)"
    )


def unavailable() -> Optional[str]:
    """None when fastrel._C is built and speaks fastrel.activations' codes, else why it cannot be used."""
    try:
        extension = _import()
    except ImportError as error:
        return f"fastrel._C is not built ({error})"
    return _mismatch(extension)


def module() -> ModuleType:
    """fastrel._C; raises ImportError when it is not built or its activation codes differ."""
    extension = _import()
    reason = _mismatch(extension)
    if reason is not None:
        raise ImportError(reason)
    return extension


def kernels(device: str) -> tuple[Forward, Backward]:
    """forward/backward calling ``fastrel._C.global_relation_{forward,backward}_<device>``."""

    def forward(a, b, weight, bias, key_mask, inner, outer) -> Tensor:
        run = getattr(module(), f"global_relation_forward_{device}")
        return run(a, b, weight, bias, key_mask, CODES[inner], CODES[outer])

    def backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic) -> tuple[Tensor, ...]:
        run = getattr(module(), f"global_relation_backward_{device}")
        return tuple(run(grad, a, b, weight, bias, key_mask, CODES[inner], CODES[outer], deterministic))

    return forward, backward


def backend(device: str, summary: str, probe: Callable[[], Optional[str]], **declared) -> Backend:
    """The backend named ``device`` that runs fastrel._C's kernels for that device, in every dtype."""
    forward, backward = kernels(device)
    return Backend(device, summary, forward, backward, devices=(device,), probe=probe, **declared)
