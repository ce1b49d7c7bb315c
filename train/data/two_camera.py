"""Datasets of one folder per person in each of two cameras (iLIDS-VID, PRID-2011).

Train takes both cameras; the query is the first camera and the gallery the second, over the test
persons. Pids are positions in each person list, as torchreid numbers them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from train.data.tracklet import PROTOCOLS, Tracklet, VideoDataset, require_dir, sort_by_frame_number


def camera_dirs(root: str | Path, label: str, folder: Path, cams: tuple[str, str]) -> tuple[Path, Path]:
    """The two camera folders `root/folder/cams[k]`, each checked to exist; `label` names the dataset."""
    base = require_dir(Path(root), f"{label} root") / folder
    return require_dir(base / cams[0], f"{label} {cams[0]}"), require_dir(base / cams[1], f"{label} {cams[1]}")


def _tracklets(
    persons: Sequence[str], cam_dirs: Sequence[Path], cams: Sequence[int], pattern: re.Pattern[str]
) -> list[Tracklet]:
    tracklets = []
    for pid, person in enumerate(persons):
        for camid in cams:
            person_dir = cam_dirs[camid] / person
            if not person_dir.is_dir():
                raise FileNotFoundError(f"person folder not found: {person_dir}")
            images = list(person_dir.glob("*.png"))
            if not images:
                raise ValueError(f"{person_dir}: empty tracklet, no .png frames")
            tracklets.append(Tracklet(sort_by_frame_number(images, pattern), pid, camid))
    return tracklets


def two_camera_split(
    name: str,
    train_persons: Sequence[str],
    test_persons: Sequence[str],
    cam_dirs: tuple[Path, Path],
    pattern: re.Pattern[str],
    protocol: str,
) -> VideoDataset:
    """The VideoDataset of one train/test split of person folders seen by cameras `cam_dirs`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return VideoDataset(
        name,
        _tracklets(train_persons, cam_dirs, (0, 1), pattern),
        _tracklets(test_persons, cam_dirs, (0,), pattern),
        _tracklets(test_persons, cam_dirs, (1,), pattern),
        protocol=protocol,
    )
