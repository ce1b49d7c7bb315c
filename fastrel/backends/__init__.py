"""The registry of backends and the one dispatcher, ``select``.

``backend="auto"`` takes, among the backends that accept a call, the first in registry order that
declares a preference (``Backend.preferred``) for the call's device, dtype and sizes; when none
does, the first that accepts it. On CUDA that gives, from H200 timings: ``sort`` wherever it
applies (exact and O((N+M) log M·H)); ``triton`` for bf16/fp16 at every size and for fp32 when TF32
is allowed; without TF32, ``cuda`` for fp32 sets larger than a clip (N or M > ``SMALL_SET_ITEMS``)
and the ``reference`` for fp32 clips; ``cuda`` for fp64. Each preference states its reason, and
``python -m fastrel.info`` prints them.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastrel.backends import cpu, cuda, reference, sort, triton
from fastrel.backends.base import Backend, Shape

#: Registry order, the fallback of ``backend="auto"`` where no preference matches. ``cpu`` comes
#: before ``triton`` so that CPU tensors never go to the Triton interpreter by default.
BACKENDS: dict[str, Backend] = {m.BACKEND.name: m.BACKEND for m in (sort, cpu, triton, cuda, reference)}


def select(
    backend: str,
    device: str,
    dtype: torch.dtype,
    inner: str,
    outer: str,
    deterministic: bool,
    shape: Optional[Shape] = None,
) -> str:
    """Name of the backend that runs this call, or a ValueError that says why none can.

    ``shape`` (N, M, H, R) lets ``auto`` pick per shape class; without it only the preferences
    that do not depend on sizes apply.
    """
    if backend != "auto":
        reason = get(backend).refusal(device, dtype, inner, outer, deterministic)
        if reason is not None:
            raise ValueError(f"backend: {reason}")
        return backend
    accepting, reasons = [], []
    for candidate in BACKENDS.values():
        reason = candidate.refusal(device, dtype, inner, outer, deterministic)
        if reason is None:
            accepting.append(candidate)
        else:
            reasons.append(reason)
    if not accepting:
        raise ValueError("backend: no backend accepts this call:\n  " + "\n  ".join(reasons))
    preferred = next((c for c in accepting if c.preference(device, dtype, shape) is not None), accepting[0])
    return preferred.name


def get(name: str) -> Backend:
    """The backend registered as ``name``; a ValueError naming the known ones otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {list(BACKENDS)}, got {name!r}")
    return BACKENDS[name]


def unavailable(name: str) -> Optional[str]:
    return BACKENDS[name].unavailable
