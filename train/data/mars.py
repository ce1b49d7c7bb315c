"""MARS in its released layout (bbox_train/, bbox_test/, info/), read the way torchreid reads it.

info/train_name.txt and test_name.txt list image names; tracks_{train,test}_info.mat hold one row
[start, end, pid, camid] per tracklet (1-based, inclusive rows of the names list, 1-based camera);
query_IDX.mat holds 1-based rows of the test table that are queries. pid -1 (junk) is dropped,
pid 0 (distractors) stays in the gallery.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from train.data.matfile import load_int_matrix
from train.data.tracklet import (
    PROTOCOLS,
    Tracklet,
    VideoDataset,
    relabel,
    require_dir,
    require_file,
)

# pid (four digits, or "00-1" for junk), camera, tracklet number, frame number.
MARS_NAME = re.compile(r"^(\d{4}|00-1)C(\d+)T(\d+)F(\d+)\.jpg$")
JUNK_PID = -1


def mars_image_name(pid: int, camid: int, tracklet: int, frame: int) -> str:
    """The MARS file name of one frame; `camid`, `tracklet` and `frame` are 1-based as on disk."""
    pid_text = "00-1" if pid == JUNK_PID else f"{pid:04d}"
    return f"{pid_text}C{camid}T{tracklet:04d}F{frame:03d}.jpg"


def _read_names(path: Path) -> list[str]:
    require_file(path, "MARS image name list")
    with open(path) as f:
        return [name for name in (line.strip() for line in f) if name]


def _load_track_info(path: Path, key: str, num_names: int) -> np.ndarray:
    table = load_int_matrix(path, key, "MARS tracklet table")
    if table.shape[1] != 4:
        raise ValueError(
            f"{path}: {key!r} must have 4 columns [start, end, pid, camid], got shape {table.shape}"
        )
    start, end = table[:, 0], table[:, 1]
    bad = np.flatnonzero((start < 1) | (end < start) | (end > num_names))
    if bad.size:
        row = bad[0]
        raise ValueError(
            f"{path}: row {row} of {key!r} spans names {start[row]}..{end[row]}, "
            f"outside 1..{num_names} of the name list or empty"
        )
    return table


def _tracklets(
    table: np.ndarray, names: list[str], image_dir: Path, table_path: Path
) -> list[Tracklet | None]:
    """One Tracklet per table row (None for junk rows), frames sorted by frame number.

    Paths are built as strings (``<image_dir>/<pid>/<name>``, what ``str(image_dir / pid / name)``
    gives): the release lists 1.19 M names, and pathlib objects would cost most of the read time.
    """
    folder = f"{image_dir}{os.sep}"
    tracklets: list[Tracklet | None] = []
    for row, (start, end, pid, camid) in enumerate(table.tolist()):
        if pid == JUNK_PID:
            tracklets.append(None)
            continue
        pid_text = f"{pid:04d}"
        keyed = []
        for name in names[start - 1 : end]:
            match = MARS_NAME.fullmatch(name)
            if match is None:
                raise ValueError(f"{table_path}: row {row} lists {name!r}, which is not a MARS image name")
            name_pid, name_cam, _, frame = match.groups()
            if name_pid != pid_text or int(name_cam) != camid:
                raise ValueError(
                    f"{table_path}: row {row} has pid {pid} camera {camid} but lists image {name!r}"
                )
            keyed.append((int(frame), f"{folder}{name_pid}{os.sep}{name}"))
        keyed.sort()
        tracklets.append(Tracklet(tuple(path for _, path in keyed), pid, camid - 1))
    return tracklets


def read_mars(root: str | Path, *, protocol: str = "torchreid", name: str = "mars") -> VideoDataset:
    """Load MARS from `root` (the folder holding bbox_train/, bbox_test/ and info/).

    protocol "torchreid": the gallery is the test set minus the queries; "official": the whole
    test set (the evaluation then drops same-identity same-camera matches, the query included).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    root = require_dir(Path(root), "MARS root")
    info = require_dir(root / "info", "MARS info folder")
    train_dir = require_dir(root / "bbox_train", "MARS training images")
    test_dir = require_dir(root / "bbox_test", "MARS test images")

    train_names = _read_names(info / "train_name.txt")
    test_names = _read_names(info / "test_name.txt")
    train_path, test_path = info / "tracks_train_info.mat", info / "tracks_test_info.mat"
    train_table = _load_track_info(train_path, "track_train_info", len(train_names))
    test_table = _load_track_info(test_path, "track_test_info", len(test_names))

    query_path = info / "query_IDX.mat"
    query_rows = load_int_matrix(query_path, "query_IDX", "MARS query index").ravel() - 1
    if query_rows.size == 0 or query_rows.min() < 0 or query_rows.max() >= len(test_table):
        raise ValueError(f"{query_path}: query_IDX must index rows 1..{len(test_table)} of the test table")
    if len(np.unique(query_rows)) != len(query_rows):
        raise ValueError(f"{query_path}: query_IDX lists a test tracklet more than once")

    train = [t for t in _tracklets(train_table, train_names, train_dir, train_path) if t is not None]
    test = _tracklets(test_table, test_names, test_dir, test_path)
    query = []
    for row in query_rows.tolist():
        tracklet = test[row]
        if tracklet is None:
            raise ValueError(f"{query_path}: query row {row + 1} is a junk (pid -1) tracklet")
        query.append(tracklet)
    is_query = set(query_rows.tolist())
    gallery = [
        t for row, t in enumerate(test) if t is not None and (protocol == "official" or row not in is_query)
    ]
    return VideoDataset(name, relabel(train), query, gallery, protocol=protocol)
