"""The problem shape every benchmark script times or compiles for: one call of global_relation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """a: (B, N, H), b: (B, M, H), weight: (R, H); ``masked``: with a key mask (RGTR's ragged clips)."""

    name: str
    B: int
    N: int
    M: int
    H: int
    R: int
    masked: bool = False
