"""A 2-process gloo DDP step equals a 1-process step on the same global batch, and distributed
feature extraction gathers the shards in order."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from train.config import Config
from train.engine import Trainer
from train.model import VideoReIDModel

WORLD = 2


def tiny_model(num_classes: int = 4) -> VideoReIDModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
    )
    return VideoReIDModel(backbone, 16, num_classes, hidden_channels=8, relation_channels=4)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(8, 3, 3, 8, 4, generator=g)  # (B, T, 3, H, W)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return clips, pids


def tiny_config() -> Config:
    config = Config()
    config.optim.lr = 1e-3
    config.run.progress = False
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_step(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        trainer = Trainer(tiny_model(), [], tiny_config(), torch.device("cpu"), f"{folder}/rank{rank}")
        clips, pids = global_batch()
        rows = slice(rank * len(pids) // WORLD, (rank + 1) * len(pids) // WORLD)
        parts = trainer.train_step(clips[rows], pids[rows])
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        torch.save({"loss": parts["loss"], "grads": grads, "state": trainer.model.state_dict()}, f"{folder}/{rank}.pt")
        trainer.close()
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_step_equals_single_process_step(tmp_path):
    torch.set_num_threads(1)
    single = Trainer(tiny_model(), [], tiny_config(), torch.device("cpu"), tmp_path / "single")
    clips, pids = global_batch()
    loss = single.train_step(clips, pids)["loss"]
    single.close()

    mp.spawn(_ddp_step, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(WORLD)]

    # Each rank's loss is its CE mean plus the global triplet term: their mean is the global loss.
    assert sum(r["loss"] for r in ranks) / WORLD == pytest.approx(loss, rel=1e-5)
    expected_grads = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    assert ranks[0]["grads"].keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, value in single.model.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
