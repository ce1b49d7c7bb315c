"""DukeMTMC-VideoReID in its released layout: {train,query,gallery}/<pid>/<tracklet>/<frames>.jpg.

Frame files are named <pid>_C<camera>_F<frame>_X<...>.jpg; the camera (1-based on disk) comes from
the file names, the pid from the folder. Train pids are relabelled; query and gallery keep theirs.
"""

from __future__ import annotations

import re
from pathlib import Path

from train.data.tracklet import PROTOCOLS, Tracklet, VideoDataset, relabel, require_dir, sort_by_frame_number

DUKE_NAME = re.compile(r"^(\d+)_C(\d+)_F(\d+)")
DUKE_FRAME = re.compile(r"_F(\d+)")
RELEASE_FOLDER = "DukeMTMC-VideoReID"


def _read_subset(subset_dir: Path) -> list[Tracklet]:
    tracklets = []
    for pid_dir in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
        if not pid_dir.name.isdigit():
            raise ValueError(f"{pid_dir}: identity folders must be named by their numeric pid")
        pid = int(pid_dir.name)
        for tracklet_dir in sorted(p for p in pid_dir.iterdir() if p.is_dir()):
            images = list(tracklet_dir.glob("*.jpg"))
            if not images:
                raise ValueError(f"{tracklet_dir}: empty tracklet, no .jpg frames")
            cams = set()
            for image in images:
                match = DUKE_NAME.match(image.name)
                if match is None:
                    raise ValueError(
                        f"{image}: not a DukeMTMC-VideoReID frame name (<pid>_C<cam>_F<frame>...)"
                    )
                if int(match.group(1)) != pid:
                    raise ValueError(f"{image}: pid in the file name differs from its folder's pid {pid}")
                cams.add(int(match.group(2)))
            if len(cams) != 1:
                raise ValueError(f"{tracklet_dir}: frames from several cameras {sorted(cams)}")
            tracklets.append(Tracklet(sort_by_frame_number(images, DUKE_FRAME), pid, cams.pop() - 1))
    return tracklets


def read_dukev(root: str | Path, *, protocol: str = "torchreid") -> VideoDataset:
    """Load DukeMTMC-VideoReID from `root` (holding train/, query/, gallery/, or DukeMTMC-VideoReID/).

    The release fixes query and gallery (queries are not in the gallery); `protocol` is recorded.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    root = require_dir(Path(root), "DukeMTMC-VideoReID root")
    if not (root / "train").is_dir() and (root / RELEASE_FOLDER).is_dir():
        root = root / RELEASE_FOLDER
    subsets = {
        s: _read_subset(require_dir(root / s, f"DukeMTMC-VideoReID {s} folder"))
        for s in ("train", "query", "gallery")
    }
    return VideoDataset(
        "dukev", relabel(subsets["train"]), subsets["query"], subsets["gallery"], protocol=protocol
    )
