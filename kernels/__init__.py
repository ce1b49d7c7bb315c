"""Triton kernels of fastrel (installed as fastrel.kernels)."""
