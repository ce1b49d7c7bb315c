"""Clip-consistent image transforms: every frame of a clip gets the same flip and erased box."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClipTransform:
    """Resize, ImageNet-normalise and (training) randomly flip and erase a clip of PIL images.

    Returns a float tensor (T, 3, height, width). Flip and random erasing are drawn once per clip,
    so the frames stay aligned; the erased box is filled with 0, the ImageNet mean after
    normalisation. Randomness comes from `generator` if given, else torch's global generator
    (which DataLoader seeds per worker).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        train: bool,
        flip_p: float = 0.5,
        erasing_p: float = 0.5,
        erasing_area: tuple[float, float] = (0.02, 0.4),
        erasing_aspect: tuple[float, float] = (0.3, 3.3),
    ) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be positive, got height={height}, width={width}")
        for name, p in (("flip_p", flip_p), ("erasing_p", erasing_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.height, self.width, self.train = height, width, train
        self.flip_p, self.erasing_p = flip_p, erasing_p
        self.erasing_area, self.erasing_aspect = erasing_area, erasing_aspect
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(
        self, images: Sequence[Image.Image], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if len(images) == 0:
            raise ValueError("a clip needs at least one image, got an empty list")
        size = (self.width, self.height)
        arrays = [np.asarray(im.convert("RGB").resize(size, Image.BILINEAR)) for im in images]
        clip = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        clip = (clip - self.mean) / self.std
        if self.train:
            if torch.rand(1, generator=generator).item() < self.flip_p:
                clip = clip.flip(-1)
            if torch.rand(1, generator=generator).item() < self.erasing_p:
                self._erase(clip, generator)
        return clip.contiguous()

    def _erase(self, clip: torch.Tensor, generator: torch.Generator | None) -> None:
        """Zero one random box (same place in every frame); up to 10 tries to find one that fits."""
        h, w = clip.shape[-2:]
        for _ in range(10):
            area = h * w * _uniform(*self.erasing_area, generator)
            log_lo, log_hi = math.log(self.erasing_aspect[0]), math.log(self.erasing_aspect[1])
            aspect = math.exp(_uniform(log_lo, log_hi, generator))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
                clip[:, :, top : top + eh, left : left + ew] = 0.0
                return


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand(1, generator=generator).item()


def build_transform(
    height: int, width: int, *, train: bool, flip_p: float = 0.5, erasing_p: float = 0.5
) -> ClipTransform:
    """The clip transform of the paper setting: resize + normalise, plus flip and erasing when training."""
    return ClipTransform(height, width, train=train, flip_p=flip_p, erasing_p=erasing_p)
