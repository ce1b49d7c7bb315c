"""Activation names, their integer codes for the kernels, and their torch implementations.

The set is the same for every backend. Derivatives at the kinks are fixed (docs/math.md):
relu'(0) = 0, abs'(0) = 0, leaky_relu'(0) = LEAKY_SLOPE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.01

#: Codes shared with csrc/relation_math.h and kernels/global_relation.py.
CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "abs": 3}

INNER = ("relu", "leaky_relu", "abs", "identity")
OUTER = ("relu", "leaky_relu", "identity")


def check_name(name: object, allowed: tuple[str, ...], argument: str) -> str:
    """Return ``name`` if it is one of ``allowed``, else raise naming the argument."""
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{argument}: expected one of {list(allowed)}, got {name!r}")
    return name


def apply(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply activation ``name`` with autograd derivatives matching the kernels' kink conventions."""
    if name == "relu":
        return torch.relu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, LEAKY_SLOPE)
    if name == "abs":
        return torch.abs(x)
    if name == "identity":
        return x
    raise ValueError(f"activation: expected one of {list(CODES)}, got {name!r}")


def derivative(x: torch.Tensor, name: str) -> torch.Tensor:
    """Derivative of activation ``name`` evaluated at ``x`` (same dtype as ``x``)."""
    if name == "relu":
        return (x > 0).to(x.dtype)
    if name == "leaky_relu":
        return torch.where(x > 0, x.new_tensor(1.0), x.new_tensor(LEAKY_SLOPE))
    if name == "abs":
        return torch.sign(x)
    if name == "identity":
        return torch.ones_like(x)
    raise ValueError(f"activation: expected one of {list(CODES)}, got {name!r}")
