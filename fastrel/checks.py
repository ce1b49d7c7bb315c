"""Argument checks of the operator and the modules: one message style, argument first.

Every error reads ``<argument>: expected <what>, got <what came>`` and is a TypeError for a wrong
kind or dtype, a ValueError for a wrong shape, device or value.
"""

from __future__ import annotations

from typing import Optional

import torch

from fastrel import backends, dtypes

Tensor = torch.Tensor


def describe(t: Tensor) -> str:
    """Shape, dtype and device of a tensor, as the messages show what came."""
    return f"shape {tuple(t.shape)}, dtype {dtypes.name(t.dtype)}, device {t.device}"


def inputs(a: Tensor, b: Tensor, weight: Tensor, bias: Optional[Tensor], key_mask: Optional[Tensor]) -> None:
    """The tensors of global_relation: kinds, dtypes, shapes (B, N, H), (B, M, H), (R, H), (R,), (B, M), devices."""
    for name, t in (("a", a), ("b", b), ("weight", weight), ("bias", bias), ("key_mask", key_mask)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    for name, t in (("a", a), ("b", b), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in dtypes.FLOATS:
            expected = ", ".join(dtypes.name(d) for d in dtypes.FLOATS)
            raise TypeError(f"{name}: expected a floating dtype ({expected}), got {dtypes.name(t.dtype)}")
    if a.dim() != 3:
        raise ValueError(f"a: expected shape (B, N, H), got {describe(a)}")
    B, _, H = a.shape
    if b.dim() != 3 or b.shape[0] != B or b.shape[2] != H:
        raise ValueError(f"b: expected shape ({B}, M, {H}) to match a, got {describe(b)}")
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected dtype {dtypes.name(a.dtype)} to match a, got {dtypes.name(b.dtype)}")
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight: expected shape (R, {H}), got {describe(weight)}")
    R = weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != R):
        raise ValueError(f"bias: expected shape ({R},), got {describe(bias)}")
    if key_mask is not None:
        if key_mask.dtype != torch.bool:
            raise TypeError(f"key_mask: expected dtype torch.bool, got {key_mask.dtype}")
        if tuple(key_mask.shape) != (B, b.shape[1]):
            raise ValueError(f"key_mask: expected shape {(B, b.shape[1])}, got {describe(key_mask)}")
    for name, t in (("b", b), ("weight", weight), ("bias", bias), ("key_mask", key_mask)):
        if t is not None and t.device != a.device:
            raise ValueError(f"{name}: expected device {a.device} to match a, got {t.device}")


def activation(name: object, allowed: tuple[str, ...], argument: str) -> str:
    """``name`` if it is one of ``allowed`` (an activation set of fastrel.activations)."""
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{argument}: expected one of {list(allowed)}, got {name!r}")
    return name


def backend(name: object) -> str:
    """``name`` if it is 'auto' or a registered backend; whether it can run a call is decided later."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a str, got {type(name).__name__}")
    if name != "auto":
        backends.get(name)
    return name


def deterministic(value: object) -> Optional[bool]:
    """``value`` if it is a bool or None (None: follow torch.are_deterministic_algorithms_enabled())."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"deterministic: expected a bool or None, got {value!r} ({type(value).__name__})")
    return value


def positive(value: object, argument: str) -> int:
    """``value`` if it is an int ≥ 1 (a layer size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument}: expected a positive int, got {value!r}")
    return value


def features(x: object, layout: str, channels: int) -> Tensor:
    """``x`` if it is a tensor of ``layout`` ('(B, N, C)'-like, C last or second) with C = ``channels``."""
    dims = layout.count(",") + 1
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != dims or x.shape[-1 if dims == 3 else 1] != channels:
        raise ValueError(f"x: expected shape {layout} with C = {channels}, got {describe(x)}")
    return x
