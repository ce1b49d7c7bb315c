"""A 2-process gloo DDP step equals a 1-process step on the same global batch, and distributed
feature extraction gathers the shards in order."""

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from train.config import Config
from train.data import Tracklet, build_transform
from train.engine import Trainer
from train.evaluate import extract_features
from train.model import VideoReIDModel

WORLD = 2


def tiny_model(num_classes: int = 4) -> VideoReIDModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
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
    config.data.workers = 0
    config.eval.chunk_len = 4
    return config


def write_tracklets(folder) -> list[Tracklet]:
    """Five tracklets of 3..7 random 8×4 images (an odd count, so the shards differ in size)."""
    from PIL import Image

    g = torch.Generator().manual_seed(2)
    tracklets = []
    for t, length in enumerate([3, 7, 5, 4, 6]):
        paths = []
        for f in range(length):
            pixels = torch.randint(0, 256, (8, 4, 3), generator=g, dtype=torch.uint8).numpy()
            path = f"{folder}/t{t}_f{f}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
        tracklets.append(Tracklet(tuple(paths), pid=t, camid=t % 2))
    return tracklets


def features(tracklets: list[Tracklet]) -> torch.Tensor:
    return extract_features(
        tiny_model().eval(), tracklets, build_transform(8, 4, train=False), tiny_config(), torch.device("cpu")
    )


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
        result = {"loss": parts["loss"], "grads": grads, "state": trainer.model.state_dict()}
        (images := Path(folder) / f"images{rank}").mkdir()
        result["features"] = features(write_tracklets(images))
        torch.save(result, f"{folder}/{rank}.pt")
        trainer.close()
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_step_and_feature_extraction_equal_single_process(tmp_path):
    torch.set_num_threads(1)
    (tmp_path / "images").mkdir()
    expected_features = features(write_tracklets(tmp_path / "images"))
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
    for r in ranks:  # every rank extracted its shard and received all of them, in order
        torch.testing.assert_close(r["features"], expected_features, rtol=1e-5, atol=1e-6)
