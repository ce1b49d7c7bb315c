"""PRID-2011 (multi-shot) in its released layout, with the ten splits of splits_prid2011.json.

The splits file, as torchreid reads it, is a JSON list of {"train": [...], "test": [...]} person
folder names (178 persons with at least 27 frames in both cameras, 89 + 89).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from train.data.tracklet import VideoDataset, is_plain_name, require_file
from train.data.two_camera import camera_dirs, two_camera_split

PRID_FRAME = re.compile(r"(\d+)\.png$")
SPLITS_FILE = "splits_prid2011.json"


def _read_split(path: Path, split_id: int) -> tuple[list[str], list[str]]:
    require_file(path, "PRID-2011 splits")
    try:
        splits = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(splits, list) or not splits:
        raise ValueError(f"{path}: expected a non-empty list of splits, got {type(splits).__name__}")
    if not 0 <= split_id < len(splits):
        raise ValueError(f"split_id must be in 0..{len(splits) - 1} for {path}, got {split_id}")
    split = splits[split_id]
    parts = []
    for key in ("train", "test"):
        names = split.get(key) if isinstance(split, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: split {split_id} needs a non-empty list of folder names under {key!r}")
        bad = [n for n in names if not is_plain_name(n)]
        if bad:
            raise ValueError(
                f"{path}: split {split_id} lists {bad[0]!r} under {key!r}; expected a plain person folder "
                "name (no path separator, '.' or '..'), so every entry stays inside the dataset"
            )
        parts.append(names)
    if set(parts[0]) & set(parts[1]):
        raise ValueError(f"{path}: split {split_id} has persons in both train and test")
    return parts[0], parts[1]


def read_prid2011(root: str | Path, *, split_id: int = 0, protocol: str = "torchreid") -> VideoDataset:
    """Load split `split_id` of PRID-2011 from `root` (holding prid_2011/ and splits_prid2011.json)."""
    cam_dirs = camera_dirs(root, "PRID-2011", Path("prid_2011", "multi_shot"), ("cam_a", "cam_b"))
    train, test = _read_split(Path(root) / SPLITS_FILE, split_id)
    return two_camera_split("prid2011", train, test, cam_dirs, PRID_FRAME, protocol)
