"""Stopping mid-epoch and resuming from the last checkpoint gives the uninterrupted result."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from train.config import Config
from train.data import PKSampler
from train.engine import CHECKPOINT_NAME, Trainer
from train.model import VideoReIDModel


class NoisyClips(Dataset):
    """Fixed clips plus fresh noise from the global RNG, as an augmentation would draw."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.clips = torch.randn(24, 3, 3, 8, 4, generator=g)
        self.pids = [i // 4 for i in range(24)]

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i):
        return self.clips[i] + 0.1 * torch.randn(self.clips[i].shape), self.pids[i], 0


def make_trainer(folder, init_seed: int, workers: int) -> Trainer:
    torch.manual_seed(init_seed)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    model = VideoReIDModel(backbone, 8, 6, hidden_channels=8, relation_channels=4)
    data = NoisyClips()
    loader = DataLoader(data, batch_size=4, sampler=PKSampler(data.pids, 2, 2, seed=0), num_workers=workers)
    config = Config()
    config.optim.epochs, config.optim.milestones, config.optim.warmup_epochs = 3, [2], 1
    config.optim.lr = 1e-3
    config.run.progress = False
    return Trainer(model, loader, config, torch.device("cpu"), folder)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_a_mid_epoch_stop_matches_the_uninterrupted_run(tmp_path, workers):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reference = make_trainer(tmp_path / "full", init_seed=0, workers=workers)
    reference.fit()
    expected = reference.model.state_dict()

    torch.manual_seed(0)
    stopped = make_trainer(tmp_path / "cut", init_seed=0, workers=workers)
    steps = {"n": 0}
    step = stopped.train_step

    def stop_after_four_steps(clips, pids):
        if steps["n"] == 4:  # epoch 2 of 3, second step (3 steps per epoch)
            raise Interrupted
        steps["n"] += 1
        return step(clips, pids)

    stopped.train_step = stop_after_four_steps
    with pytest.raises(Interrupted):
        stopped.fit()
    stopped.close()

    torch.manual_seed(12345)  # a different process state: the checkpoint must restore everything
    resumed = make_trainer(tmp_path / "cut", init_seed=7, workers=workers)
    resumed.resume(tmp_path / "cut" / CHECKPOINT_NAME)
    assert resumed.epoch == 1
    resumed.fit()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    assert resumed.optimizer.state_dict()["state"].keys() == reference.optimizer.state_dict()["state"].keys()
    assert resumed.scheduler.get_last_lr() == reference.scheduler.get_last_lr()


def test_checkpoint_loads_with_weights_only(tmp_path):
    trainer = make_trainer(tmp_path, init_seed=0, workers=0)
    trainer.save()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 0 and set(state) >= {"model", "optimizer", "scheduler", "rng", "config"}
