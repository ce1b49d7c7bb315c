"""The records every dataset reader produces: tracklets and the train/query/gallery split."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROTOCOLS = ("torchreid", "official")


@dataclass(frozen=True)
class Tracklet:
    """One person seen by one camera: image paths in frame order, identity and 0-based camera id."""

    frames: tuple[str, ...]
    pid: int
    camid: int

    def __post_init__(self) -> None:
        if len(self.frames) == 0:
            raise ValueError(f"a tracklet needs at least one frame (pid={self.pid}, camid={self.camid})")

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class VideoDataset:
    """A video re-ID dataset split: train (pids relabelled 0..P-1), query and gallery tracklets.

    `protocol` names how query and gallery were formed: "torchreid" (queries left out of the
    gallery) or "official" (the whole test set is the gallery). `num_train_pids` and
    `num_train_cams` are derived from `train` (camera ids there run 0..num_train_cams-1).
    """

    name: str
    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]
    num_train_pids: int | None = None
    num_train_cams: int | None = None
    protocol: str = "torchreid"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        pids = sorted({t.pid for t in self.train})
        if pids != list(range(len(pids))):
            raise ValueError(f"{self.name}: train pids must be relabelled 0..P-1, got {pids[:10]}...")
        cams = 1 + max((t.camid for t in self.train), default=-1)
        for attr, derived in (("num_train_pids", len(pids)), ("num_train_cams", cams)):
            given = getattr(self, attr)
            if given is not None and given != derived:
                raise ValueError(f"{self.name}: {attr}={given} but the train tracklets give {derived}")
            setattr(self, attr, derived)

    def summary(self) -> str:
        """A small table of identities, tracklets and frames per subset, for logs."""
        lines = [f"{self.name} ({self.protocol} protocol)", "  subset   | # ids | # tracklets | # frames"]
        for subset in ("train", "query", "gallery"):
            tracklets = getattr(self, subset)
            pids = len({t.pid for t in tracklets})
            frames = sum(len(t) for t in tracklets)
            lines.append(f"  {subset:<8} | {pids:5d} | {len(tracklets):11d} | {frames:8d}")
        return "\n".join(lines)


def relabel(tracklets: Iterable[Tracklet]) -> list[Tracklet]:
    """Map the pids of `tracklets` onto 0..P-1 in increasing order of the original pid."""
    tracklets = list(tracklets)
    new_pid = {pid: i for i, pid in enumerate(sorted({t.pid for t in tracklets}))}
    return [Tracklet(t.frames, new_pid[t.pid], t.camid) for t in tracklets]


def sort_by_frame_number(paths: Sequence[str | Path], pattern: re.Pattern[str]) -> tuple[str, ...]:
    """Order image paths by the integer frame number that `pattern`'s first group finds in the file name.

    Sorting numbers rather than strings keeps F1000 after F999.
    """
    keyed = []
    for path in paths:
        match = pattern.search(Path(path).name)
        if match is None:
            raise ValueError(f"{path}: file name has no frame number matching {pattern.pattern!r}")
        keyed.append((int(match.group(1)), str(path)))
    keyed.sort()
    return tuple(path for _, path in keyed)


def require_dir(path: Path, what: str) -> Path:
    """Return `path` if it is a directory, else raise FileNotFoundError naming it and what it should hold."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else raise FileNotFoundError naming it and what it should hold."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def is_plain_name(name: str) -> bool:
    """True for one path component (a file or folder name): not empty, '.' or '..', no separator or NUL.

    Names read from a dataset's index files must be plain, so an entry cannot reach outside the
    dataset root (``../../..`` or an absolute path).
    """
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    return name not in ("", ".", "..") and "\0" not in name and not any(sep in name for sep in separators)
