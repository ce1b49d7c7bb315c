"""The activations δ (inner) and σ (outer): names, kernel codes, and their torch implementations.

The set is the same for every backend. Derivatives at the kinks are fixed (docs/math.md):
relu'(0) = 0, abs'(0) = 0, leaky_relu'(0) = LEAKY_SLOPE. NaN behaves as in PyTorch: every
activation maps NaN to NaN, and the derivatives at NaN are autograd's (relu' = 1,
leaky_relu' = LEAKY_SLOPE, abs' = 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.01

#: Codes the kernels use. fastrel._C exports its own (csrc/relation_math.h) and the native
#: backends refuse to run when they differ (fastrel/backends/native.py).
CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "abs": 3}

INNER = ("relu", "leaky_relu", "abs", "identity")
OUTER = ("relu", "leaky_relu", "identity")


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """δ(x) or σ(x) for activation ``name``, with autograd derivatives matching the kernels'."""
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
    """δ'(x) or σ'(x) for activation ``name`` (same dtype as ``x``), as autograd takes it."""
    if name == "relu":
        return torch.where(x <= 0, x.new_tensor(0.0), x.new_tensor(1.0))  # NaN: 1, as torch.relu's backward
    if name == "leaky_relu":
        return torch.where(x > 0, x.new_tensor(1.0), x.new_tensor(LEAKY_SLOPE))
    if name == "abs":
        return torch.sign(x).nan_to_num(nan=0.0)  # NaN: 0, as torch.abs's backward
    if name == "identity":
        return torch.ones_like(x)
    raise ValueError(f"activation: expected one of {list(CODES)}, got {name!r}")
