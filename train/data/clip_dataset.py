"""A torch Dataset of clips cut from tracklets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from train.data.images import load_image
from train.data.temporal import SAMPLINGS, frame_indices
from train.data.tracklet import Tracklet


class ClipDataset(Dataset):
    """Item i is `(clip, pid, camid)` for tracklet i.

    sampling "random" (restricted random, for training) and "evenly" give clip (seq_len, 3, H, W).
    sampling "all" gives every frame of the tracklet, (L, 3, H, W) with L the tracklet length; the
    caller chunks or pads it (lengths differ, so batch these one tracklet at a time or with a
    padding collate). `transform` maps a list of PIL images to a (T, 3, H, W) tensor.
    """

    def __init__(
        self,
        tracklets: Sequence[Tracklet],
        seq_len: int,
        sampling: str,
        transform: Callable[[list[Image.Image]], torch.Tensor],
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        self.tracklets = list(tracklets)
        self.seq_len, self.sampling, self.transform = seq_len, sampling, transform

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        tracklet = self.tracklets[index]
        chosen = frame_indices(len(tracklet.frames), self.seq_len, self.sampling)
        decoded = {i: load_image(tracklet.frames[i]) for i in sorted(set(chosen))}
        return self.transform([decoded[i] for i in chosen]), tracklet.pid, tracklet.camid
