"""Checkpoints: atomic writes (an interrupted or killed write leaves the previous checkpoint as it
was), and corrupt, truncated, foreign or non-finite files refused with an error naming the file."""

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import checkpoint


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1, "w": torch.arange(4.0)}, path)

    def crash_midway(obj, handle):
        handle.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()

    state = checkpoint.load(path)
    assert state["epoch"] == 1
    assert torch.equal(state["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    checkpoint.save_atomic({"rng": checkpoint.rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


# ---------------------------------------------------------------- fault injection


def _saved(tmp_path, state=None):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(state or {"epoch": 3, "model": {"w": torch.arange(4096.0)}}, path)
    return path


def test_bit_flipped_tensor_loads_in_torch_but_is_refused_naming_the_file(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(torch.arange(4096.0)[1000:1004].numpy().tobytes())  # inside the tensor
    data[offset + 2] ^= 0x10
    path.write_bytes(bytes(data))
    silently = torch.load(path, weights_only=True)  # the zip CRCs go unchecked: this is the fault
    assert not torch.equal(silently["model"]["w"], torch.arange(4096.0))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(path)) + ".*SHA-256 digest"):
        checkpoint.load(path)


@pytest.mark.parametrize("keep", [0, 10, 200, 0.5, 0.99])
def test_truncated_checkpoint_gives_a_clear_error(tmp_path, keep):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(path)) + ": not a readable checkpoint"):
        checkpoint.load(path)


def test_a_file_that_is_not_a_checkpoint_gives_a_clear_error(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("epoch: 3\n")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match=r"foreign\.pt: not a checkpoint of this format.*state_dict"):
        checkpoint.load(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoint.load(tmp_path / "missing.pt")


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    weights = torch.ones(6)
    weights[4] = float("nan")
    path = _saved(tmp_path, {"model": {"layer.weight": weights, "layer.bias": torch.zeros(2)}})
    with pytest.raises(checkpoint.CheckpointError, match=r"last\.pt: non-finite values .* in model\.layer\.weight$"):
        checkpoint.load(path)


def test_kill_during_a_write_keeps_the_old_checkpoint_and_the_next_save_removes_the_temporary(tmp_path):
    path = _saved(tmp_path)
    writer = (
        "import os, signal, sys, torch\n"
        "from train import checkpoint\n"
        "def dies_midway(obj, handle):\n"
        "    handle.write(b'x' * 4096); handle.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpoint.torch.save = dies_midway\n"
        "checkpoint.save_atomic({'epoch': 4}, sys.argv[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", writer, str(path)], cwd=Path(__file__).parents[1], check=False)
    assert done.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(left) == 1 and left[0].startswith(".last.pt.") and left[0].endswith(".tmp")
    assert checkpoint.load(path)["epoch"] == 3

    others = [tmp_path / ".other.pt.abc.tmp", tmp_path / "last.pt.tmp", tmp_path / ".last.pt.notes"]
    for other in others:
        other.write_bytes(b"not ours")
    checkpoint.save_atomic({"epoch": 5}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt"] + [o.name for o in others])
    assert checkpoint.load(path)["epoch"] == 5


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def record_replace(src, dst):
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", record_fsync)
    monkeypatch.setattr(checkpoint.os, "replace", record_replace)
    _saved(tmp_path)
    assert events == ["fsync file", "replace", "fsync folder"]
