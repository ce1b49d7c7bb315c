"""Which frames of a tracklet make a clip: restricted random, evenly spaced, or all of them."""

from __future__ import annotations

import torch

SAMPLINGS = ("random", "evenly", "all")


def frame_indices(
    num_frames: int, seq_len: int, sampling: str, *, generator: torch.Generator | None = None
) -> list[int]:
    """Indices (non-decreasing, in 0..num_frames-1) of the frames that form one clip.

    "random" (restricted random sampling): split the tracklet into `seq_len` near-equal chunks and
    draw one frame from each. "evenly": the middle frame of each chunk. Tracklets shorter than
    `seq_len` repeat frames in order so every frame appears. "all": every frame, `seq_len` ignored.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "all":
        return list(range(num_frames))
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    if sampling == "evenly":
        return [((2 * j + 1) * num_frames) // (2 * seq_len) for j in range(seq_len)]
    if num_frames < seq_len:
        return [(j * num_frames) // seq_len for j in range(seq_len)]
    bounds = [(j * num_frames) // seq_len for j in range(seq_len + 1)]
    offsets = torch.rand(seq_len, generator=generator).tolist()
    return [
        bounds[j] + min(int(offsets[j] * (bounds[j + 1] - bounds[j])), bounds[j + 1] - bounds[j] - 1)
        for j in range(seq_len)
    ]


def evenly(n: int, limit: int) -> torch.Tensor:
    """Indices of at most ``limit`` frames spread evenly over ``n`` (all when limit ≤ 0 or ≥ n)."""
    if limit <= 0 or limit >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long()
