"""`load_dataset`: one entry point for every supported dataset, by name."""

from __future__ import annotations

from pathlib import Path

from train.data.dukev import read_dukev
from train.data.ilidsvid import read_ilidsvid
from train.data.mars import read_mars
from train.data.prid2011 import read_prid2011
from train.data.synthetic import generate_synthetic
from train.data.tracklet import PROTOCOLS, VideoDataset

DATASETS = ("mars", "dukev", "ilidsvid", "prid2011", "synthetic")


def load_dataset(
    name: str, root: str | Path, *, split_id: int = 0, protocol: str = "torchreid"
) -> VideoDataset:
    """Read dataset `name` from `root`, the folder holding its released layout.

    mars: bbox_train/, bbox_test/, info/. dukev: train/, query/, gallery/ (or DukeMTMC-VideoReID/
    holding them). ilidsvid: i-LIDS-VID/sequences/ and "train-test people splits/". prid2011:
    prid_2011/multi_shot/ and splits_prid2011.json. synthetic: MARS layout, generated with
    `generate_synthetic` defaults if info/query_IDX.mat is missing. `split_id` picks one of the
    ten iLIDS-VID / PRID-2011 splits. `protocol` matters for MARS layouts; DukeMTMC-VideoReID,
    iLIDS-VID and PRID-2011 define one query/gallery split, which both protocol names denote.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if name in ("ilidsvid", "prid2011"):
        reader = read_ilidsvid if name == "ilidsvid" else read_prid2011
        return reader(root, split_id=split_id, protocol=protocol)
    if split_id != 0:
        raise ValueError(f"{name} has a single split, so split_id must be 0, got {split_id}")
    if name == "mars":
        return read_mars(root, protocol=protocol)
    if name == "dukev":
        return read_dukev(root, protocol=protocol)
    if not (Path(root) / "info" / "query_IDX.mat").is_file():
        generate_synthetic(root)
    return read_mars(root, protocol=protocol, name="synthetic")
