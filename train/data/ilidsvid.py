"""iLIDS-VID in its released layout, with the ten splits of train_test_splits_ilidsvid.mat.

`ls_set` (splits × persons) holds 1-based positions in the sorted list of cam1 person folders; the
first half of each row is the test set, the second half the training set (Wang et al., ECCV 2014).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from train.data.matfile import load_int_matrix
from train.data.tracklet import VideoDataset
from train.data.two_camera import camera_dirs, two_camera_split

ILIDS_FRAME = re.compile(r"_(\d+)\.png$")
SPLITS_FILE = Path("train-test people splits") / "train_test_splits_ilidsvid.mat"


def read_ilidsvid(root: str | Path, *, split_id: int = 0, protocol: str = "torchreid") -> VideoDataset:
    """Load split `split_id` of iLIDS-VID from `root` (holding i-LIDS-VID/ and the splits folder)."""
    root = Path(root)
    cam_dirs = camera_dirs(root, "iLIDS-VID", Path("i-LIDS-VID", "sequences"), ("cam1", "cam2"))
    persons = sorted(p.name for p in cam_dirs[0].iterdir() if p.is_dir())
    others = sorted(p.name for p in cam_dirs[1].iterdir() if p.is_dir())
    if persons != others:
        differ = sorted(set(persons) ^ set(others))[:5]
        raise ValueError(
            f"{cam_dirs[0]} and {cam_dirs[1]} must hold the same person folders; they differ on {differ}"
        )

    splits_path = root / SPLITS_FILE
    splits = load_int_matrix(splits_path, "ls_set", "iLIDS-VID splits")
    if splits.shape[1] < 2 or splits.shape[1] % 2:
        raise ValueError(
            f"{splits_path}: ls_set needs an even number of persons per split, got shape {splits.shape}"
        )
    if not 0 <= split_id < splits.shape[0]:
        raise ValueError(f"split_id must be in 0..{splits.shape[0] - 1} for {splits_path}, got {split_id}")
    row = splits[split_id]
    if row.min() < 1 or row.max() > len(persons) or len(np.unique(row)) != len(row):
        raise ValueError(
            f"{splits_path}: split {split_id} must list distinct persons in 1..{len(persons)} "
            f"(the person folders in {cam_dirs[0]})"
        )
    half = len(row) // 2
    test = [persons[i - 1] for i in sorted(row[:half].tolist())]
    train = [persons[i - 1] for i in sorted(row[half:].tolist())]
    return two_camera_split("ilidsvid", train, test, cam_dirs, ILIDS_FRAME, protocol)
