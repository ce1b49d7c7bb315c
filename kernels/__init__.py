"""Triton kernels of fastrel (installed as fastrel.kernels). Importing this package does not import
Triton, so the backend adapter can ask ``interpreting()`` before Triton is loaded."""

import os


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
