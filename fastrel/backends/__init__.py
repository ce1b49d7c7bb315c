"""The registry of backends, in the order ``backend="auto"`` tries them."""

from __future__ import annotations

from typing import Optional

import torch

from fastrel.backends import cpu, cuda, reference, sort, triton
from fastrel.backends.base import Backend

#: Preference order for ``backend="auto"``: the first backend that accepts a call runs it.
#: ``sort`` is exact and asymptotically cheaper, so it goes first where it applies; ``cpu``
#: comes before ``triton`` so that CPU tensors never go to the Triton interpreter by default.
BACKENDS: dict[str, Backend] = {m.BACKEND.name: m.BACKEND for m in (sort, cpu, triton, cuda, reference)}


def select(
    backend: str, device: str, dtype: torch.dtype, inner: str, outer: str, deterministic: bool
) -> str:
    """Name of the backend that runs this call, or a ValueError that says why none can."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {list(BACKENDS)}, got {backend!r}")
        reason = BACKENDS[backend].refusal(device, dtype, inner, outer, deterministic)
        if reason is not None:
            raise ValueError(f"backend: {reason}")
        return backend
    reasons = []
    for candidate in BACKENDS.values():
        reason = candidate.refusal(device, dtype, inner, outer, deterministic)
        if reason is None:
            return candidate.name
        reasons.append(reason)
    raise ValueError("backend: no backend accepts this call:\n  " + "\n  ".join(reasons))


def get(name: str) -> Backend:
    return BACKENDS[name]


def unavailable(name: str) -> Optional[str]:
    return BACKENDS[name].unavailable
