"""What a backend is: the capabilities it declares, and the two functions it implements.

A backend never raises from being imported. ``probe`` says whether it can run on this machine
at all (built, importable); ``refusal`` says why it cannot take one particular call. Both return
``None`` when all is well and a sentence otherwise, which dispatch shows to the user.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from fastrel import activations, dtypes

Tensor = torch.Tensor

#: The largest N and M of a small set (an RGTR clip): the shape class where ``auto`` prefers the
#: ``cuda`` backend's one-block-per-clip kernels to Triton's large tiles.
SMALL_SET_ITEMS = 32

#: forward(a, b, weight, bias, key_mask, inner, outer) -> g (B, N, R) in a's dtype.
#: Inputs are contiguous; weight and bias have a's dtype; key_mask is bool (B, M) or None.
Forward = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor], str, str], Tensor]

#: backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic)
#:     -> (da, db, dweight, dbias); dbias is a (R,) tensor even when bias is None.
Backward = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class Shape:
    """The sizes of one call: N queries, M keys, H hidden channels, R relation channels."""

    N: int
    M: int
    H: int
    R: int


@dataclass(frozen=True)
class Preference:
    """A class of calls for which ``backend="auto"`` puts a backend first on a device, and why.

    A call belongs to the class when its device is listed, its dtype too (``dtypes=None``: any
    the backend accepts), its larger set, max(N, M), lies within [``min_items``, ``max_items``] (a
    bound needs the call's shape) and, where ``tf32`` is set, fp32 matmuls may or may not use TF32
    (``torch.backends.cuda.matmul.allow_tf32``) as it says.
    """

    reason: str
    devices: tuple[str, ...]
    dtypes: Optional[tuple[torch.dtype, ...]] = None
    max_items: Optional[int] = None
    min_items: Optional[int] = None
    tf32: Optional[bool] = None

    def matches(self, device: str, dtype: torch.dtype, shape: Optional[Shape]) -> bool:
        if device not in self.devices or (self.dtypes is not None and dtype not in self.dtypes):
            return False
        if self.tf32 is not None and torch.backends.cuda.matmul.allow_tf32 != self.tf32:
            return False
        if self.max_items is None and self.min_items is None:
            return True
        if shape is None:
            return False
        items = max(shape.N, shape.M)
        return (self.max_items is None or items <= self.max_items) and (
            self.min_items is None or items >= self.min_items
        )

    def describe(self) -> str:
        """One line: the class, then why."""
        dtypes = "any dtype" if self.dtypes is None else ",".join(str(d).removeprefix("torch.") for d in self.dtypes)
        bounds = []
        if self.min_items is not None:
            bounds.append(f"max(N, M) ≥ {self.min_items}")
        if self.max_items is not None:
            bounds.append(f"max(N, M) ≤ {self.max_items}")
        if self.tf32 is not None:
            bounds.append("TF32 allowed" if self.tf32 else "TF32 not allowed")
        sizes = f", {' and '.join(bounds)}" if bounds else ""
        return f"{','.join(self.devices)} {dtypes}{sizes}: {self.reason}"


@dataclass(frozen=True)
class Backend:
    """A way of computing ``global_relation``, with what it supports declared as data."""

    name: str
    summary: str
    forward: Forward
    backward: Backward
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = dtypes.FLOATS
    probe: Callable[[], Optional[str]] = field(default=lambda: None)
    inner: tuple[str, ...] = activations.INNER
    outer: tuple[str, ...] = activations.OUTER
    #: False when the backend only runs with atomics (cannot honour deterministic mode).
    deterministic: bool = True
    #: The classes of calls where ``auto`` prefers this backend to the registry order, with why.
    preferred: tuple[Preference, ...] = ()
    #: The (inner, outer) pairs it computes, where that is not every pair of ``inner`` × ``outer``.
    pairs: Optional[tuple[tuple[str, str], ...]] = None

    @property
    def supported_pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (inner, outer) pair this backend accepts."""
        if self.pairs is not None:
            return self.pairs
        return tuple((inner, outer) for inner in self.inner for outer in self.outer)

    @functools.cached_property
    def unavailable(self) -> Optional[str]:
        """None when the backend can run on this machine, else why not (probed once)."""
        try:
            return self.probe()
        except Exception as error:  # a broken build must read as a reason, not a crash
            return f"{type(error).__name__}: {error}"

    def refusal(
        self, device: str, dtype: torch.dtype, inner: str, outer: str, deterministic: bool
    ) -> Optional[str]:
        """None when this backend accepts the call, else a sentence saying why it does not."""
        if self.unavailable is not None:
            return f"backend {self.name!r} is unavailable: {self.unavailable}"
        if device not in self.devices:
            return f"backend {self.name!r} runs on {list(self.devices)}, got device {device!r}"
        if dtype not in self.dtypes:
            names = [str(d).removeprefix("torch.") for d in self.dtypes]
            return f"backend {self.name!r} supports dtypes {names}, got {str(dtype).removeprefix('torch.')}"
        if inner not in self.inner:
            return f"backend {self.name!r} supports inner in {list(self.inner)}, got {inner!r}"
        if outer not in self.outer:
            return f"backend {self.name!r} supports outer in {list(self.outer)}, got {outer!r}"
        if (inner, outer) not in self.supported_pairs:
            names = ", ".join(f"{i}/{o}" for i, o in self.supported_pairs)
            return f"backend {self.name!r} supports inner/outer pairs {names}, got {inner}/{outer}"
        if deterministic and not self.deterministic:
            return f"backend {self.name!r} cannot run in deterministic mode"
        return None

    def preference(self, device: str, dtype: torch.dtype, shape: Optional[Shape]) -> Optional[Preference]:
        """The first declared class this call belongs to, or None."""
        return next((p for p in self.preferred if p.matches(device, dtype, shape)), None)
