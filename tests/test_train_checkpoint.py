"""Atomic checkpoint writes: an interrupted write leaves the previous checkpoint as it was."""

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
