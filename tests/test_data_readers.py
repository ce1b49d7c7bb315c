"""Each dataset reader on a tiny tree in the dataset's released layout, and on broken trees."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from train.data import Tracklet, load_dataset
from train.data.mars import mars_image_name


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 4), (10, 20, 30)).save(path)


def frame_numbers(tracklet: Tracklet, pattern: str) -> list[int]:
    return [int(re.search(pattern, Path(f).name).group(1)) for f in tracklet.frames]


# ---------------------------------------------------------------- MARS

# (pid, camera 1-based, tracklet number, frame numbers in the order the name list gives them)
MARS_TRAIN = [(5, 1, 1, [1, 2, 3]), (5, 3, 1, [1000, 999, 998]), (9, 2, 1, [7, 8]), (-1, 1, 1, [1])]
MARS_TEST = [
    (-1, 2, 1, [1, 2]),  # junk: dropped
    (0, 4, 1, [1]),  # distractor: gallery only
    (2, 1, 1, [3, 1, 2]),
    (2, 2, 1, [1, 2]),
    (2, 2, 2, [1]),
    (7, 1, 1, [1, 2, 3, 4]),
    (7, 6, 1, [1]),
]
MARS_QUERY_ROWS = [3, 6]  # 1-based rows of MARS_TEST


def write_mars(root: Path, train=MARS_TRAIN, test=MARS_TEST, query_rows=MARS_QUERY_ROWS) -> Path:
    for subset, tracks in (("train", train), ("test", test)):
        names, rows = [], []
        for pid, cam, number, frames in tracks:
            first = len(names) + 1
            for f in frames:
                name = mars_image_name(pid, cam, number, f)
                write_image(root / f"bbox_{subset}" / name[:4] / name)
                names.append(name)
            rows.append([first, len(names), pid, cam])
        (root / "info").mkdir(parents=True, exist_ok=True)
        (root / "info" / f"{subset}_name.txt").write_text("\n".join(names) + "\n")
        scipy.io.savemat(
            root / "info" / f"tracks_{subset}_info.mat", {f"track_{subset}_info": np.array(rows)}
        )
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([query_rows])})
    return root


def test_mars_reads_train_relabelled_without_junk_and_frames_in_numeric_order(tmp_path):
    ds = load_dataset("mars", write_mars(tmp_path))
    assert ds.name == "mars" and ds.num_train_pids == 2 and ds.num_train_cams == 3
    assert [(t.pid, t.camid, len(t)) for t in ds.train] == [(0, 0, 3), (0, 2, 3), (1, 1, 2)]
    assert frame_numbers(ds.train[1], r"F(\d+)") == [998, 999, 1000]
    assert all(Path(f).parent == tmp_path / "bbox_train" / "0005" for f in ds.train[0].frames)
    assert all(Path(f).is_file() for t in ds.train for f in t.frames)


def test_mars_torchreid_protocol_keeps_queries_out_of_the_gallery(tmp_path):
    ds = load_dataset("mars", write_mars(tmp_path), protocol="torchreid")
    assert ds.protocol == "torchreid"
    assert [(t.pid, t.camid) for t in ds.query] == [(2, 0), (7, 0)]
    assert frame_numbers(ds.query[0], r"F(\d+)") == [1, 2, 3]
    assert [(t.pid, t.camid, len(t)) for t in ds.gallery] == [(0, 3, 1), (2, 1, 2), (2, 1, 1), (7, 5, 1)]
    assert not set(ds.query) & set(ds.gallery)


def test_mars_official_protocol_uses_the_whole_test_set_as_gallery(tmp_path):
    ds = load_dataset("mars", write_mars(tmp_path), protocol="official")
    assert ds.protocol == "official"
    assert [(t.pid, t.camid) for t in ds.gallery] == [(0, 3), (2, 0), (2, 1), (2, 1), (7, 0), (7, 5)]
    assert set(ds.query) <= set(ds.gallery)


def test_mars_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("mars", tmp_path / "nowhere")


def test_mars_missing_table_names_the_file(tmp_path):
    write_mars(tmp_path)
    (tmp_path / "info" / "tracks_test_info.mat").unlink()
    with pytest.raises(FileNotFoundError, match="tracks_test_info.mat"):
        load_dataset("mars", tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"wrong_key": np.ones((2, 4))}, "expected a variable 'track_train_info'"),
        ({"track_train_info": np.ones((3, 3))}, "4 columns"),
        ({"track_train_info": np.array([[1, 99, 5, 1]])}, "outside 1..9"),
        ({"track_train_info": np.array([[3, 2, 5, 1]])}, "outside 1..9"),
        ({"track_train_info": np.array([[1.5, 3, 5, 1]])}, "integers"),
        (
            {"track_train_info": np.array([[1, 3, 9, 1]])},
            "pid 9 camera 1 but lists image '0005C1T0001F001.jpg'",
        ),
    ],
)
def test_mars_wrong_table_content_names_the_file(tmp_path, content, message):
    write_mars(tmp_path)
    path = tmp_path / "info" / "tracks_train_info.mat"
    scipy.io.savemat(path, content)
    with pytest.raises(ValueError, match=re.escape(str(path))) as err:
        load_dataset("mars", tmp_path)
    assert message in str(err.value)


def test_mars_corrupt_mat_file_names_the_file(tmp_path):
    write_mars(tmp_path)
    path = tmp_path / "info" / "query_IDX.mat"
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_dataset("mars", tmp_path)


@pytest.mark.parametrize("rows, message", [([8], "rows 1..7"), ([3, 3], "more than once"), ([1], "junk")])
def test_mars_bad_query_index_names_the_file(tmp_path, rows, message):
    write_mars(tmp_path, query_rows=rows)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "info" / "query_IDX.mat"))) as err:
        load_dataset("mars", tmp_path)
    assert message in str(err.value)


def _mars_by_pathlib(root: Path) -> dict[str, list[tuple]]:
    """MARS tracklets read the plain way (pathlib paths, frames sorted by number), as a reference."""

    def read(subset: str) -> list[tuple]:
        names = (root / "info" / f"{subset}_name.txt").read_text().split()
        table = scipy.io.loadmat(root / "info" / f"tracks_{subset}_info.mat")[f"track_{subset}_info"]
        out = []
        for start, end, pid, cam in table.tolist():
            if pid != -1:
                paths = [root / f"bbox_{subset}" / n[:4] / n for n in names[start - 1 : end]]
                paths.sort(key=lambda p: (int(re.search(r"F(\d+)\.jpg$", p.name).group(1)), str(p)))
                out.append((tuple(str(p) for p in paths), pid, cam - 1))
            else:
                out.append(None)
        return out

    test = read("test")
    query_rows = [r - 1 for r in scipy.io.loadmat(root / "info" / "query_IDX.mat")["query_IDX"].ravel()]
    return {"train": [t for t in read("train") if t], "query": [test[r] for r in query_rows], "test": test}


def test_mars_lists_equal_a_plain_pathlib_reading(tmp_path):
    shuffled = [(3, 2, 4, [12, 3, 1000, 999, 1, 7]), *MARS_TEST]
    root = write_mars(tmp_path / "tree", test=shuffled, query_rows=[4, 7])
    expected = _mars_by_pathlib(root)
    ds = load_dataset("mars", root, protocol="official")
    pid_of = {old: new for new, old in enumerate(sorted({t[1] for t in expected["train"]}))}
    assert [(t.frames, t.pid, t.camid) for t in ds.train] == [(f, pid_of[p], c) for f, p, c in expected["train"]]
    assert [(t.frames, t.pid, t.camid) for t in ds.query] == expected["query"]
    assert [(t.frames, t.pid, t.camid) for t in ds.gallery] == [t for t in expected["test"] if t]


@pytest.mark.parametrize("name", ["../0005C1T0001F001.jpg", "/tmp/0005C1T0001F001.jpg", "0005/0005C1T0001F001.jpg"])
def test_mars_name_list_entries_cannot_leave_the_image_folders(tmp_path, name):
    write_mars(tmp_path)
    names_path = tmp_path / "info" / "train_name.txt"
    names = names_path.read_text().split("\n")
    names[0] = name
    names_path.write_text("\n".join(names))
    with pytest.raises(ValueError, match=re.escape(f"lists {name!r}, which is not a MARS image name")):
        load_dataset("mars", tmp_path)


def test_mars_rejects_unknown_protocol_and_split(tmp_path):
    write_mars(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        load_dataset("mars", tmp_path, protocol="market")
    with pytest.raises(ValueError, match="split_id"):
        load_dataset("mars", tmp_path, split_id=1)
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("market1501", tmp_path)


# ---------------------------------------------------------------- DukeMTMC-VideoReID

DUKE = {
    "train": [(12, 1, 6, [1, 2, 10]), (12, 2, 3, [5]), (40, 7, 8, [9999, 10000, 11])],
    "query": [(3, 1, 2, [1, 2])],
    "gallery": [(3, 2, 5, [4]), (77, 3, 1, [1, 2])],
}


def write_dukev(root: Path) -> Path:
    for subset, tracks in DUKE.items():
        for pid, tracklet, cam, frames in tracks:
            for f in frames:
                name = f"{pid:04d}_C{cam}_F{f:04d}_X{1000 + f:05d}.jpg"
                write_image(root / subset / f"{pid:04d}" / f"{tracklet:04d}" / name)
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_dukev_reads_pid_from_folder_camera_from_name_frames_in_numeric_order(tmp_path, nested):
    root = write_dukev(tmp_path / "DukeMTMC-VideoReID" if nested else tmp_path)
    ds = load_dataset("dukev", tmp_path)
    assert ds.num_train_pids == 2 and ds.num_train_cams == 8
    assert [(t.pid, t.camid, len(t)) for t in ds.train] == [(0, 5, 3), (0, 2, 1), (1, 7, 3)]
    assert frame_numbers(ds.train[0], r"_F(\d+)") == [1, 2, 10]
    assert frame_numbers(ds.train[2], r"_F(\d+)") == [11, 9999, 10000]
    assert [(t.pid, t.camid) for t in ds.query] == [(3, 1)]
    assert [(t.pid, t.camid) for t in ds.gallery] == [(3, 4), (77, 0)]
    assert Path(ds.gallery[1].frames[0]).parent == root / "gallery" / "0077" / "0003"


def test_dukev_empty_tracklet_names_the_folder(tmp_path):
    write_dukev(tmp_path)
    empty = tmp_path / "gallery" / "0077" / "0009"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        load_dataset("dukev", tmp_path)


def test_dukev_missing_subset_names_the_folder(tmp_path):
    write_dukev(tmp_path)
    for f in (tmp_path / "query").rglob("*.jpg"):
        f.unlink()
    for d in sorted((tmp_path / "query").rglob("*"), reverse=True):
        d.rmdir()
    (tmp_path / "query").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "query"))):
        load_dataset("dukev", tmp_path)


# ---------------------------------------------------------------- iLIDS-VID

ILIDS_PERSONS = ["person001", "person002", "person004", "person007"]


def write_ilidsvid(root: Path, ls_set: np.ndarray | None = None) -> Path:
    for p, person in enumerate(ILIDS_PERSONS):
        for cam in (1, 2):
            for f in [95, 100, 105] if p == 0 and cam == 1 else [p + cam, 10 * (p + 1)]:
                write_image(
                    root / "i-LIDS-VID" / "sequences" / f"cam{cam}" / person / f"cam{cam}_{person}_{f}.png"
                )
    if ls_set is None:  # two splits; first half of each row is the test set (1-based person positions)
        ls_set = np.array([[4, 2, 1, 3], [1, 3, 2, 4]])
    split_dir = root / "train-test people splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(split_dir / "train_test_splits_ilidsvid.mat", {"ls_set": ls_set})
    return root


def test_ilidsvid_split_query_cam1_gallery_cam2_frames_in_numeric_order(tmp_path):
    ds = load_dataset("ilidsvid", write_ilidsvid(tmp_path), split_id=0)
    assert ds.num_train_pids == 2 and ds.num_train_cams == 2
    train_dirs = [Path(t.frames[0]).parent.name for t in ds.train]
    assert train_dirs == ["person001", "person001", "person004", "person004"]
    assert [(t.pid, t.camid) for t in ds.train] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert frame_numbers(ds.train[0], r"_(\d+)\.png") == [95, 100, 105]
    assert [(Path(t.frames[0]).parent.name, t.pid, t.camid) for t in ds.query] == [
        ("person002", 0, 0),
        ("person007", 1, 0),
    ]
    assert [(Path(t.frames[0]).parent.name, t.pid, t.camid) for t in ds.gallery] == [
        ("person002", 0, 1),
        ("person007", 1, 1),
    ]
    assert all("/cam2/" in f for t in ds.gallery for f in t.frames)


def test_ilidsvid_second_split_swaps_the_halves(tmp_path):
    ds = load_dataset("ilidsvid", write_ilidsvid(tmp_path), split_id=1)
    assert sorted({Path(t.frames[0]).parent.name for t in ds.query}) == ["person001", "person004"]
    assert sorted({Path(t.frames[0]).parent.name for t in ds.train}) == ["person002", "person007"]


@pytest.mark.parametrize(
    "ls_set, split_id, message",
    [
        (np.array([[1, 2, 3, 9]]), 0, "distinct persons in 1..4"),
        (np.array([[1, 1, 3, 4]]), 0, "distinct persons in 1..4"),
        (np.array([[1, 2, 3]]), 0, "even number"),
        (np.array([[1, 2, 3, 4]]), 1, "split_id must be in 0..0"),
    ],
)
def test_ilidsvid_wrong_split_content_names_the_file(tmp_path, ls_set, split_id, message):
    write_ilidsvid(tmp_path, ls_set)
    path = tmp_path / "train-test people splits" / "train_test_splits_ilidsvid.mat"
    with pytest.raises(ValueError, match=re.escape(str(path))) as err:
        load_dataset("ilidsvid", tmp_path, split_id=split_id)
    assert message in str(err.value)


def test_ilidsvid_empty_person_folder_names_it(tmp_path):
    write_ilidsvid(tmp_path)
    folder = tmp_path / "i-LIDS-VID" / "sequences" / "cam2" / "person004"
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=re.escape(str(folder))):
        load_dataset("ilidsvid", tmp_path, split_id=0)


# ---------------------------------------------------------------- PRID-2011

PRID_SPLITS = [
    {"train": ["person_0003", "person_0001"], "test": ["person_0002", "person_0010"]},
    {"train": ["person_0002", "person_0010"], "test": ["person_0001", "person_0003"]},
]


def write_prid2011(root: Path, splits=PRID_SPLITS) -> Path:
    multi_shot = root / "prid_2011" / "multi_shot"
    for person in ["person_0001", "person_0002", "person_0003", "person_0010"]:
        for cam in ("cam_a", "cam_b"):
            frames = [10000, 999, 9998] if cam == "cam_a" else [1, 2]
            for f in frames:
                write_image(multi_shot / cam / person / f"{f:04d}.png")
    write_image(multi_shot / "cam_b" / "person_0500" / "0001.png")  # seen by cam_b only: never listed
    (root / "splits_prid2011.json").write_text(json.dumps(splits))
    return root


def test_prid2011_split_follows_the_json_order_query_cam_a_gallery_cam_b(tmp_path):
    ds = load_dataset("prid2011", write_prid2011(tmp_path), split_id=0)
    assert ds.num_train_pids == 2 and ds.num_train_cams == 2
    assert [(Path(t.frames[0]).parent.name, t.pid, t.camid) for t in ds.train] == [
        ("person_0003", 0, 0),
        ("person_0003", 0, 1),
        ("person_0001", 1, 0),
        ("person_0001", 1, 1),
    ]
    assert frame_numbers(ds.train[0], r"(\d+)\.png") == [999, 9998, 10000]
    assert [(Path(t.frames[0]).parent.name, t.pid) for t in ds.query] == [
        ("person_0002", 0),
        ("person_0010", 1),
    ]
    assert all("/cam_a/" in f for t in ds.query for f in t.frames)
    assert all("/cam_b/" in f and len(t) == 2 for t in ds.gallery for f in t.frames)
    assert len(load_dataset("prid2011", tmp_path, split_id=1).query) == 2


@pytest.mark.parametrize(
    "splits, message",
    [
        ({"train": []}, "non-empty list of splits"),
        ([{"train": ["person_0001"]}], "under 'test'"),
        ([{"train": ["person_0001"], "test": ["person_0001"]}], "both train and test"),
    ],
)
def test_prid2011_wrong_splits_content_names_the_file(tmp_path, splits, message):
    write_prid2011(tmp_path, splits)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "splits_prid2011.json"))) as err:
        load_dataset("prid2011", tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "entry", ["../../..", "/etc", "person_0001/../../../secret", "..", ".", "cam_b\\person_0500", "a\0b"]
)
def test_prid2011_split_entries_must_be_plain_folder_names(tmp_path, entry):
    write_prid2011(tmp_path, [{"train": ["person_0001"], "test": ["person_0002", entry]}])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "splits_prid2011.json"))) as err:
        load_dataset("prid2011", tmp_path)
    assert f"lists {entry!r} under 'test'; expected a plain person folder name" in str(err.value)


def test_prid2011_unknown_person_names_the_folder(tmp_path):
    write_prid2011(tmp_path, [{"train": ["person_0001"], "test": ["person_0500"]}])
    with pytest.raises(FileNotFoundError, match="cam_a/person_0500"):
        load_dataset("prid2011", tmp_path)


def test_prid2011_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        load_dataset("prid2011", tmp_path / "absent")


def test_tracklet_without_frames_is_rejected():
    with pytest.raises(ValueError, match="at least one frame"):
        Tracklet((), pid=1, camid=0)
