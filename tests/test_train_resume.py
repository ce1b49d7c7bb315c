"""Stopping mid-epoch and resuming from the last checkpoint gives the uninterrupted result; a
resume with a changed config, a damaged or foreign checkpoint, or diverged weights is refused."""

import re

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from train import checkpoint
from train.config import Config, ConfigError, ModelConfig
from train.data import PKSampler
from train.engine import CHECKPOINT_NAME, Trainer, takes_effect
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


def make_trainer(folder, init_seed: int, workers: int, **changes) -> Trainer:
    """A tiny trainer; ``changes`` sets config values by ``section__key`` (for ``section.key``)."""
    torch.manual_seed(init_seed)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    model = VideoReIDModel(backbone, 8, 6, hidden_channels=8, relation_channels=4)
    data = NoisyClips()
    loader = DataLoader(data, batch_size=4, sampler=PKSampler(data.pids, 2, 2, seed=0), num_workers=workers)
    config = Config()
    config.optim.epochs, config.optim.milestones, config.optim.warmup_epochs = 3, [2], 1
    config.optim.lr = 1e-3
    config.run.progress = False
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
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


def test_resume_with_a_changed_learning_rate_is_refused_naming_every_changed_key(tmp_path):
    make_trainer(tmp_path, init_seed=0, workers=0).save()
    changed = make_trainer(tmp_path, init_seed=0, workers=0, optim__lr=0.5, loss__margin=0.2, eval__batch_size=3)
    with pytest.raises(ConfigError) as err:
        changed.resume(tmp_path / CHECKPOINT_NAME)
    message = str(err.value)
    assert "optim.lr 0.001 -> 0.5" in message and "loss.margin 0.3 -> 0.2" in message
    assert re.search(r"would take effect: eval\.batch_size 16 -> 3", message)
    assert changed.epoch == 0 and changed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.01)


def test_resume_takes_evaluation_and_length_changes_and_reports_them(tmp_path):
    make_trainer(tmp_path, init_seed=0, workers=0).save()
    resumed = make_trainer(tmp_path, init_seed=0, workers=0, optim__epochs=5, eval__batch_size=3)
    changes = resumed.resume(tmp_path / CHECKPOINT_NAME)
    assert changes == [("optim.epochs", 3, 5), ("eval.batch_size", 16, 3)]
    assert resumed.config.optim.epochs == 5


def test_eval_only_resume_ignores_training_keys_but_not_model_keys(tmp_path):
    make_trainer(tmp_path, init_seed=0, workers=0).save()
    evaluating = make_trainer(tmp_path, init_seed=0, workers=0, run__eval_only=True, optim__lr=0.5)
    assert evaluating.resume(tmp_path / CHECKPOINT_NAME, restore_rng=False) == [
        ("optim.lr", 0.001, 0.5),
        ("run.eval_only", False, True),
    ]
    assert [takes_effect(key, evaluating.config) for key in ("optim.lr", "run.eval_only")] == [False, True]
    other_model = make_trainer(tmp_path, init_seed=0, workers=0, run__eval_only=True, model__inner="abs")
    with pytest.raises(ConfigError, match=rf"model\.inner '{ModelConfig().inner}' -> 'abs'"):
        other_model.resume(tmp_path / CHECKPOINT_NAME, restore_rng=False)


def test_resume_from_a_damaged_or_foreign_checkpoint_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, init_seed=0, workers=0)
    trainer.save()
    path = tmp_path / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    target = next(v for v in trainer.model.state_dict().values() if v.is_floating_point() and v.numel() >= 16)
    data[bytes(data).index(target.reshape(-1)[:4].numpy().tobytes()) + 1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="SHA-256 digest"):
        make_trainer(tmp_path, init_seed=0, workers=0).resume(path)
    checkpoint.save_atomic({"epoch": 1, "model": {}}, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"not a training checkpoint, it lacks \['optimizer'"):
        make_trainer(tmp_path, init_seed=0, workers=0).resume(path)


def test_diverged_weights_are_not_saved_over_the_last_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, init_seed=0, workers=0)
    trainer.save()
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters())[0].fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite weights in .*training diverged"):
        trainer.save()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_each_epoch_summary_is_printed_when_the_epoch_ends(tmp_path, capsys):
    trainer = make_trainer(tmp_path, init_seed=0, workers=0)
    train_epoch = trainer.train_epoch

    def fail_in_the_second_epoch(epoch):
        if epoch == 1:
            raise Interrupted
        return train_epoch(epoch)

    trainer.train_epoch = fail_in_the_second_epoch
    with pytest.raises(Interrupted):
        trainer.fit()
    printed = capsys.readouterr().out
    assert re.search(r"^epoch 1/3: .*loss [0-9.]+.*lr ", printed, re.MULTILINE)
    # The ablation's seconds per step are read from these lines.
    from train.ablation import EPOCH_LINE

    assert [m.group(1) for line in printed.splitlines() if (m := EPOCH_LINE.match(line))] == ["1"]


def test_a_new_trainer_removes_temporaries_of_a_killed_write(tmp_path):
    stale = tmp_path / f".{CHECKPOINT_NAME}.k3_x9abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    make_trainer(tmp_path, init_seed=0, workers=0).close()
    assert not stale.exists()
