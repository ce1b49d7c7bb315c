"""The floating dtypes global_relation takes, and the dtype each one accumulates in.

The C++ side has the same rule once, in csrc/checks.h (``accumulation_type``).
"""

from __future__ import annotations

import torch

#: The 16-bit dtypes: tensor-core operands as they are.
HALF = (torch.bfloat16, torch.float16)
#: Every accepted dtype but float64: those that accumulate in float32.
NARROW = (torch.float32, *HALF)
#: Every dtype the operator accepts; a backend declares the subset it runs.
FLOATS = (torch.float64, *NARROW)


def accumulation(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for the others: where sums and GEMM results are kept."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def name(dtype: torch.dtype) -> str:
    """``float32`` rather than ``torch.float32``, as error messages write it."""
    return str(dtype).removeprefix("torch.")
