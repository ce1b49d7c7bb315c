"""Temporal sampling, clip-consistent transforms and ClipDataset, including unreadable frames."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from train.data import ClipDataset, Tracklet, build_transform, frame_indices
from train.data.transforms import IMAGENET_MEAN, IMAGENET_STD

lengths = st.integers(1, 120)
seq_lens = st.integers(1, 16)


@settings(max_examples=200, deadline=None)
@given(lengths, seq_lens, st.integers(0, 2**31))
def test_restricted_random_takes_one_frame_from_each_chunk(num_frames, seq_len, seed):
    gen = torch.Generator().manual_seed(seed)
    chosen = frame_indices(num_frames, seq_len, "random", generator=gen)
    assert len(chosen) == seq_len
    assert all(0 <= i < num_frames for i in chosen)
    assert chosen == sorted(chosen)
    if num_frames >= seq_len:
        bounds = [(j * num_frames) // seq_len for j in range(seq_len + 1)]
        assert all(bounds[j] <= chosen[j] < bounds[j + 1] for j in range(seq_len))
        assert len(set(chosen)) == seq_len
    else:
        assert set(chosen) == set(range(num_frames))


@settings(max_examples=200, deadline=None)
@given(lengths, seq_lens)
def test_evenly_spreads_frames_over_the_tracklet(num_frames, seq_len):
    chosen = frame_indices(num_frames, seq_len, "evenly")
    assert len(chosen) == seq_len and chosen == sorted(chosen)
    assert all(0 <= i < num_frames for i in chosen)
    if num_frames >= seq_len:
        assert len(set(chosen)) == seq_len
        gaps = np.diff([0, *chosen, num_frames - 1])
        assert gaps.max() <= -(-num_frames // seq_len)
    else:
        assert set(chosen) == set(range(num_frames))


def test_all_sampling_returns_every_frame_in_order():
    assert frame_indices(7, 4, "all") == list(range(7))


def test_restricted_random_varies_between_draws():
    gen = torch.Generator().manual_seed(0)
    draws = {tuple(frame_indices(40, 4, "random", generator=gen)) for _ in range(20)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    "args, message",
    [((0, 4, "random"), "num_frames"), ((5, 0, "evenly"), "seq_len"), ((5, 4, "dense"), "sampling")],
)
def test_frame_indices_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        frame_indices(*args)


def gradient_image(value: int) -> Image.Image:
    """A 16x8 image whose left and right halves differ, so a flip is visible."""
    array = np.full((16, 8, 3), value, dtype=np.uint8)
    array[:, :4] = 255 - value
    return Image.fromarray(array)


def test_eval_transform_resizes_and_normalises():
    clip = build_transform(32, 16, train=False)([Image.new("RGB", (8, 16), (255, 0, 128))] * 3)
    assert clip.shape == (3, 3, 32, 16) and clip.dtype == torch.float32
    rgb = torch.tensor([1.0, 0.0, 128 / 255])
    expected = (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(clip[:, :, 5, 7], expected.expand(3, 3), atol=1e-5, rtol=0)


def test_training_flip_is_drawn_once_per_clip():
    frames = [gradient_image(v) for v in (0, 60, 120, 180)]
    plain = build_transform(16, 8, train=False)(frames)
    flipped = build_transform(16, 8, train=True, flip_p=1.0, erasing_p=0.0)(frames)
    torch.testing.assert_close(flipped, plain.flip(-1))
    gen = torch.Generator().manual_seed(3)
    transform = build_transform(16, 8, train=True, flip_p=0.5, erasing_p=0.0)
    outcomes = set()
    for _ in range(30):
        clip = transform(frames, generator=gen)
        per_frame = [torch.equal(clip[t], plain[t].flip(-1)) for t in range(4)]
        assert len(set(per_frame)) == 1
        outcomes.add(per_frame[0])
    assert outcomes == {True, False}


def test_training_erasing_blanks_the_same_box_in_every_frame():
    frames = [gradient_image(v) for v in (10, 50, 90)]
    transform = build_transform(64, 32, train=True, flip_p=0.0, erasing_p=1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        clip = transform(frames, generator=gen)
        erased = (clip == 0).all(dim=1)
        assert erased[0].any()
        assert all(torch.equal(erased[0], erased[t]) for t in range(3))
        rows, cols = erased[0].nonzero(as_tuple=True)
        box = erased[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()


def test_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        build_transform(8, 4, train=False)([])
    with pytest.raises(ValueError, match="flip_p"):
        build_transform(8, 4, train=True, flip_p=1.5)


def write_tracklet(folder, count: int) -> Tracklet:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(count):
        path = folder / f"{f:03d}.png"
        Image.new("RGB", (8, 16), (f * 20, 0, 0)).save(path)
        paths.append(str(path))
    return Tracklet(tuple(paths), pid=3, camid=1)


@pytest.mark.parametrize("sampling, count, expected_t", [("random", 9, 4), ("evenly", 2, 4), ("all", 9, 9)])
def test_clip_dataset_returns_clip_pid_camid(tmp_path, sampling, count, expected_t):
    tracklet = write_tracklet(tmp_path / "t", count)
    dataset = ClipDataset([tracklet], 4, sampling, build_transform(16, 8, train=False))
    clip, pid, camid = dataset[0]
    assert len(dataset) == 1 and (pid, camid) == (3, 1)
    assert clip.shape == (expected_t, 3, 16, 8)
    red = clip[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    frame_ids = (red * 255 / 20).round().long().tolist()
    assert frame_ids == sorted(frame_ids)
    if sampling == "all":
        assert frame_ids == list(range(count))


def test_clip_dataset_batches_through_a_dataloader(tmp_path):
    tracklets = [write_tracklet(tmp_path / str(i), 5 + i) for i in range(3)]
    dataset = ClipDataset(tracklets, 4, "random", build_transform(16, 8, train=True))
    clips, pids, camids = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert clips.shape == (3, 4, 3, 16, 8) and pids.tolist() == [3, 3, 3] and camids.tolist() == [1, 1, 1]


def test_corrupt_frame_fails_naming_the_file(tmp_path):
    tracklet = write_tracklet(tmp_path / "t", 3)
    with open(tracklet.frames[1], "r+b") as f:
        f.write(b"garbage" * 4)
    dataset = ClipDataset([tracklet], 3, "all", build_transform(16, 8, train=False))
    with pytest.raises(ValueError, match=re.escape(tracklet.frames[1])):
        dataset[0]


def test_truncated_jpeg_fails_naming_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    dataset = ClipDataset([Tracklet((str(path),), 0, 0)], 2, "evenly", build_transform(16, 8, train=False))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        dataset[0]


def test_missing_frame_fails_naming_the_file(tmp_path):
    tracklet = write_tracklet(tmp_path / "t", 2)
    missing = tmp_path / "t" / "gone.png"
    dataset = ClipDataset([Tracklet((*tracklet.frames, str(missing)), 0, 0)], 3, "all", lambda ims: ims)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        dataset[0]


def test_clip_dataset_rejects_bad_arguments(tmp_path):
    tracklet = write_tracklet(tmp_path / "t", 2)
    with pytest.raises(ValueError, match="sampling"):
        ClipDataset([tracklet], 4, "dense", lambda ims: ims)
    with pytest.raises(ValueError, match="seq_len"):
        ClipDataset([tracklet], 0, "random", lambda ims: ims)
