"""The synthetic generator: MARS layout read back unchanged, determinism, and a learnable signal."""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import train.data.registry
from train.data import generate_synthetic, load_dataset
from train.data.mars import MARS_NAME

TINY = dict(num_ids=12, num_train_ids=6, num_cams=3, min_len=3, max_len=5, height=32, width=16)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=5, **TINY)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path, tiny_root):
    again = tree_bytes(generate_synthetic(tmp_path / "again", seed=5, **TINY))
    assert again == tree_bytes(tiny_root)
    other = tree_bytes(generate_synthetic(tmp_path / "other", seed=6, **TINY))
    assert other != again


def test_layout_is_exactly_mars(tiny_root):
    assert sorted(p.name for p in tiny_root.iterdir()) == ["bbox_test", "bbox_train", "info"]
    info = tiny_root / "info"
    assert sorted(p.name for p in info.iterdir()) == [
        "query_IDX.mat",
        "test_name.txt",
        "tracks_test_info.mat",
        "tracks_train_info.mat",
        "train_name.txt",
    ]
    for subset in ("train", "test"):
        names = (info / f"{subset}_name.txt").read_text().split()
        table = scipy.io.loadmat(info / f"tracks_{subset}_info.mat")[f"track_{subset}_info"]
        assert table.shape[1] == 4 and table[0, 0] == 1 and table[-1, 1] == len(names)
        assert np.all(table[1:, 0] == table[:-1, 1] + 1)
        for name in names:
            assert MARS_NAME.match(name), name
            image = Image.open(tiny_root / f"bbox_{subset}" / name[:4] / name)
            assert image.format == "JPEG" and image.size == (16, 32)
    query = scipy.io.loadmat(info / "query_IDX.mat")["query_IDX"]
    assert query.shape[0] == 1 and query.min() >= 1


def test_mars_reader_loads_it_with_the_configured_sizes(tiny_root):
    ds = load_dataset("mars", tiny_root)
    assert ds.num_train_pids == 6 and ds.num_train_cams == 3
    assert {t.camid for t in ds.query + ds.gallery} <= {0, 1, 2}
    assert all(3 <= len(t) <= 5 for t in ds.train + ds.query + ds.gallery)
    assert len({t.pid for t in ds.query}) == 6
    assert any(t.pid == 0 for t in ds.gallery)
    train_cams = defaultdict(set)
    for t in ds.train:
        train_cams[t.pid].add(t.camid)
    assert all(len(cams) >= 2 for cams in train_cams.values())


def test_every_query_has_its_identity_in_another_camera_of_the_gallery(tiny_root):
    ds = load_dataset("mars", tiny_root, protocol="torchreid")
    gallery = {(t.pid, t.camid) for t in ds.gallery}
    for q in ds.query:
        assert q.pid > 0
        assert any(pid == q.pid and cam != q.camid for pid, cam in gallery)


def test_load_dataset_generates_synthetic_when_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(
        train.data.registry, "generate_synthetic", functools.partial(generate_synthetic, **TINY)
    )
    root = tmp_path / "fresh"
    ds = load_dataset("synthetic", root, protocol="official")
    assert ds.name == "synthetic" and ds.protocol == "official" and ds.num_train_pids == 6
    assert (root / "info" / "query_IDX.mat").is_file()
    monkeypatch.setattr(train.data.registry, "generate_synthetic", None)  # second load must only read
    assert load_dataset("synthetic", root).num_train_pids == 6


def colour_descriptor(frames: tuple[str, ...], person_strip: bool) -> np.ndarray:
    """Square-rooted chromaticity histogram of a tracklet, optionally of the central strip only."""
    clip = np.stack([np.asarray(Image.open(f), dtype=np.float64) for f in frames])
    if person_strip:
        h, w = clip.shape[1:3]
        clip = clip[:, int(h * 0.3) : int(h * 0.85), 3 * w // 8 : 5 * w // 8]
    pixels = clip.reshape(-1, 3) + 1.0
    bins = np.clip((pixels[:, :2] / pixels.sum(1, keepdims=True) * 8).astype(int), 0, 7)
    hist = np.bincount(bins[:, 0] * 8 + bins[:, 1], minlength=64)
    return np.sqrt(hist / hist.sum())


def rank1(ds, person_strip: bool) -> float:
    q = np.stack([colour_descriptor(t.frames, person_strip) for t in ds.query])
    g = np.stack([colour_descriptor(t.frames, person_strip) for t in ds.gallery])
    qp, gp = np.array([t.pid for t in ds.query]), np.array([t.pid for t in ds.gallery])
    qc, gc = np.array([t.camid for t in ds.query]), np.array([t.camid for t in ds.gallery])
    dist = ((q[:, None] - g[None]) ** 2).sum(-1)
    dist[(qp[:, None] == gp[None]) & (qc[:, None] == gc[None])] = np.inf
    return float((gp[dist.argmin(1)] == qp).mean())


def test_identity_is_in_the_person_and_the_background_misleads(tmp_path):
    root = generate_synthetic(tmp_path, seed=0, num_ids=40, min_len=4, max_len=6, num_distractors=2)
    ds = load_dataset("mars", root)
    chance = 1 / len({t.pid for t in ds.query})
    person, whole = rank1(ds, person_strip=True), rank1(ds, person_strip=False)
    assert person >= 6 * chance
    assert whole < person / 3


def _frames(scene, who, camera, seed: int = 0) -> np.ndarray:
    """The tracklet of `who` in `scene` as float (T, H, W, 3), with the pixel noise of a fixed seed."""
    from train.data.synthetic import _render_tracklet

    frames = _render_tracklet(who, camera, scene, 4, (64, 32), np.random.default_rng(seed))
    return np.stack(frames).astype(np.float64)


def _person_columns(scene, who, camera) -> np.ndarray:
    """Per column, how many pixels the person changes against the empty scene (summed over frames)."""
    changed = np.abs(_frames(scene, who, camera) - _frames(scene, None, camera)).sum(-1) > 60
    return changed.sum(axis=(0, 1)).astype(np.float64)


def _still_scene(**box):
    from train.data.synthetic import Scene

    return Scene(clutter=[], direction=1, phase=0.0, pace=0.0, drift=0.0, light=1.0, occluder=None, **box)


def test_a_misaligned_box_moves_the_person_off_the_centre():
    from train.data.synthetic import _appearances, _cameras

    rng = np.random.default_rng(0)
    camera, who = _cameras(rng, 1)[0], _appearances(rng, 1)[0]
    columns = np.arange(32) + 0.5
    centred = _person_columns(_still_scene(), who, camera)
    shifted = _person_columns(_still_scene(shift=(0.25, 0.0)), who, camera)
    centre = (columns * centred).sum() / centred.sum()
    moved = (columns * shifted).sum() / shifted.sum()
    assert abs(centre - 16) < 2
    assert moved - centre > 0.15 * 32  # a shift of a quarter box width moves the body's centre with it


def test_a_neighbour_shows_only_on_its_side_of_the_box():
    from train.data.synthetic import Neighbour, _appearances, _cameras

    rng = np.random.default_rng(1)
    camera = _cameras(rng, 1)[0]
    who, other = _appearances(rng, 2)
    alone = _frames(_still_scene(), who, camera)
    for in_front in (False, True):
        beside = _frames(_still_scene(neighbour=Neighbour(other, 0.6, 0.0, in_front)), who, camera)
        changed = (np.abs(beside - alone).sum(-1) > 60).sum(axis=(0, 1))
        # Beyond the person's own reach: the neighbour's near side at the right edge, nothing at the left.
        assert changed[27:].sum() > 20
        assert changed[:6].sum() == 0


def test_realism_options_reach_the_written_frames_and_are_validated(tmp_path):
    plain = tree_bytes(generate_synthetic(tmp_path / "plain", seed=5, **TINY))
    crowded = tree_bytes(generate_synthetic(tmp_path / "crowded", seed=5, misalign=0.2, neighbour_p=1.0, **TINY))
    shared = [k for k in plain.keys() & crowded.keys() if k.endswith(".jpg")]
    assert sum(plain[k] != crowded[k] for k in shared) > 0.9 * len(shared)
    with pytest.raises(ValueError, match="misalign"):
        generate_synthetic(tmp_path / "bad", misalign=0.8)
    with pytest.raises(ValueError, match="neighbour_p"):
        generate_synthetic(tmp_path / "bad", neighbour_p=1.5)
