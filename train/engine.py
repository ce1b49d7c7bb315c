"""The training loop: one process or torchrun DDP, bf16 autocast on GPU, per-epoch atomic
checkpoints and exact resumption.

Resumption is exact because everything random is either restored or re-derived: the checkpoint
stores model, optimizer, scheduler, the next epoch and every rank's RNG states; samplers are
seeded by (seed, epoch) through ``set_epoch``; evaluation loaders use their own generator so they
never draw from the global RNG. A resumed training therefore refuses a config that differs from
the saved one in a key that shapes what the epochs compute (see ``RESUME_MAY_CHANGE``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from train import checkpoint, distributed
from train.config import DEVICES, Config, ConfigError, OptimConfig, flatten, to_dict
from train.losses import ReIDLoss

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config")

# Keys a resumed training may change: they decide what is evaluated, shown, written where, how
# long the run is and how a stall is timed out, not what the finished epochs computed (data.workers
# changes which augmentations later batches draw: the run goes on, no longer bit-exact). Any other
# change is refused. With run.eval_only nothing trains, so only model.* must match the weights.
RESUME_MAY_CHANGE = (
    "eval.",
    "run.output",
    "run.progress",
    "run.log_every",
    "run.eval_only",
    "run.ddp_timeout_minutes",
    "data.workers",
    "optim.epochs",
)
EVAL_ONLY_MUST_MATCH = ("model.",)
# Keys only training reads: under run.eval_only a change to them is accepted and has no effect.
TRAINING_ONLY = ("optim.", "loss.", "data.P", "data.K", "data.seq_len", "run.sync_bn", "run.log_every")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise ValueError(f"run.device: expected one of {list(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device: 'cuda' asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def lr_factor(epoch: int, config: OptimConfig) -> float:
    """The lr multiplier of ``epoch``: linear warm-up from ``warmup_factor``, then ×gamma per milestone."""
    if epoch < config.warmup_epochs:
        progress = epoch / config.warmup_epochs
        return config.warmup_factor + (1.0 - config.warmup_factor) * progress
    return config.gamma ** sum(epoch >= m for m in config.milestones)


def build_optimizer(model: nn.Module, config: OptimConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Adam over the trainable parameters; RGSA's and RGTR's (``head_*`` options) in a group of their own."""
    head_names = ("spatial.", "temporal.")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in named if n.startswith(head_names)]
    groups = [{"params": [p for n, p in named if not n.startswith(head_names)]}]
    if head:
        decay = config.weight_decay if config.head_weight_decay is None else config.head_weight_decay
        groups.append({"params": head, "lr": config.lr * config.head_lr_factor, "weight_decay": decay})
    optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config))
    return optimizer, scheduler


class Trainer:
    """Runs epochs of ``loader`` (batches of (clips, pids, camids)) and checkpoints after each.

    The model is wrapped in DDP (with batch statistics synced over ranks when ``run.sync_bn``)
    when a process group is up. ``evaluate`` (optional) is called every ``eval.period`` epochs
    with the bare model and returns a dict of scalars to log.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Iterable,
        config: Config,
        device: torch.device,
        output: Path,
        evaluate: Callable[[nn.Module, int], dict] | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.output = Path(output)
        self.loader = loader
        self.evaluate = evaluate
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        model = model.to(device)
        if self.world_size > 1 and config.run.sync_bn:
            model = distributed.convert_batchnorm(model, device)
        self.model = model
        self.net = (
            DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            if distributed.initialized()
            else model
        )
        self.criterion = ReIDLoss(config.loss)
        self.optimizer, self.scheduler = build_optimizer(model, config.optim)
        self.epoch = 0
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            checkpoint.remove_stale_temporaries(self.output / CHECKPOINT_NAME)  # of a killed save
            self.writer = SummaryWriter(str(self.output / "tensorboard"))

    @property
    def autocast(self) -> torch.autocast:
        enabled = self.config.run.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def steps_per_epoch(self) -> int:
        steps = len(self.loader)
        cap = self.config.optim.steps_per_epoch
        return min(steps, cap) if cap > 0 else steps

    def train_step(self, clips: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
        """One optimizer step on this rank's part of the global batch; the loss parts as floats."""
        self.net.train()
        clips = clips.to(self.device, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        with self.autocast:
            output = self.net(clips)
        loss, parts = self.criterion(output, pids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        parts["loss"] = loss.item()
        return parts

    def train_epoch(self, epoch: int) -> dict[str, float]:
        for holder in (getattr(self.loader, "batch_sampler", None), getattr(self.loader, "sampler", None)):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        steps = self.steps_per_epoch()
        totals: dict[str, float] = {}
        bar = None
        if self.rank == 0 and self.config.run.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.config.optim.epochs}", leave=False)
        for step, batch in enumerate(self.loader):
            if step >= steps:
                break
            clips, pids = batch[0], batch[1]
            parts = self.train_step(clips, pids)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            global_step = epoch * steps + step
            if self.writer is not None and global_step % max(self.config.run.log_every, 1) == 0:
                for key, value in parts.items():
                    self.writer.add_scalar(f"train/{key}", value, global_step)
            if bar is not None:
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        return {key: value / max(steps, 1) for key, value in totals.items()}

    def fit(self) -> list[dict]:
        """Train from ``self.epoch`` to ``optim.epochs``, printing each epoch's summary (rank 0) as it
        ends; the list of per-epoch summaries."""
        history = []
        for epoch in range(self.epoch, self.config.optim.epochs):
            start = time.perf_counter()
            summary = self.train_epoch(epoch)
            self.scheduler.step()
            self.epoch = epoch + 1
            summary.update(
                epoch=self.epoch, seconds=time.perf_counter() - start, lr=self.optimizer.param_groups[0]["lr"]
            )
            self.save()
            period = self.config.eval.period
            if (
                self.evaluate is not None
                and period > 0
                and self.epoch % period == 0
                and self.epoch < self.config.optim.epochs
            ):
                summary.update(self.evaluate(self.model, self.epoch))
            if self.rank == 0:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if k != "epoch")
                print(f"epoch {self.epoch}/{self.config.optim.epochs}: {shown}", flush=True)
            if self.writer is not None:
                for key, value in summary.items():
                    if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                        self.writer.add_scalar(f"epoch/{key}", value, self.epoch)
                self.writer.flush()
            history.append(summary)
        return history

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "config": to_dict(self.config),
        }

    def save(self) -> None:
        """Write ``last.pt`` atomically (rank 0) with every rank's RNG states.

        Non-finite weights (a diverged run) raise on every rank instead, and the last checkpoint
        stays as it was."""
        path = self.output / CHECKPOINT_NAME
        bad = checkpoint.non_finite(self.model.state_dict())
        if bad:
            raise FloatingPointError(
                f"epoch {self.epoch}: non-finite weights in {', '.join(bad[:5])}; training diverged, "
                f"{path} keeps the last finite state"
            )
        rng = distributed.gather_objects(checkpoint.rng_state())
        if self.rank == 0:
            state = self.state()
            state["rng"] = rng
            checkpoint.save_atomic(state, path)
        distributed.barrier()

    def resume(self, path: Path, restore_rng: bool = True) -> list[tuple[str, Any, Any]]:
        """Continue from the checkpoint at ``path`` exactly where the run that wrote it stopped.

        ``restore_rng=False`` loads the states but not the RNGs (any number of processes), for
        evaluation of a finished run. The config must equal the saved one except in keys of
        ``RESUME_MAY_CHANGE`` (all but model.* under ``run.eval_only``); returns those changes as
        (key, saved, now), and raises ConfigError naming every changed key otherwise.
        """
        state = checkpoint.load(path)
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise checkpoint.CheckpointError(f"{path}: not a training checkpoint, it lacks {missing}")
        changes = self.check_config(state["config"], path)
        if restore_rng and len(state["rng"]) != self.world_size:
            raise ValueError(
                f"resume: {path} was written by {len(state['rng'])} processes, this run has {self.world_size}; "
                "an exact continuation needs the same number"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        if restore_rng:
            checkpoint.set_rng_state(state["rng"][self.rank])
        return changes

    def check_config(self, saved: Any, path: Path) -> list[tuple[str, Any, Any]]:
        """The changes of ``self.config`` from the ``saved`` config dict that may take effect on resume."""
        if not isinstance(saved, dict):
            raise checkpoint.CheckpointError(f"{path}: 'config' is a {type(saved).__name__}, not a dict")
        changes = config_changes(saved, self.config)
        if self.config.run.eval_only:
            refused = [c for c in changes if c[0].startswith(EVAL_ONLY_MUST_MATCH)]
            why = "the saved weights were built with"
        else:
            refused = [c for c in changes if not c[0].startswith(RESUME_MAY_CHANGE)]
            why = "an exact continuation needs"
        if refused:
            allowed = [c for c in changes if c not in refused]
            raise ConfigError(
                f"resume: {path} was saved with another config; {why} these keys as saved: {_describe(refused)}"
                + (f" (the other changes would take effect: {_describe(allowed)})" if allowed else "")
                + "; restore them, or start a new run in another run.output"
            )
        return changes

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def config_changes(saved: dict, config: Config) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every current key that differs. A key the saved config
    lacks (added since) counts as its default; saved keys that no longer exist are ignored."""
    default = flatten(to_dict(Config()))
    before = {**default, **flatten(saved)}
    return [(key, before[key], value) for key, value in flatten(to_dict(config)).items() if before[key] != value]


def takes_effect(key: str, config: Config) -> bool:
    """Whether a changed ``key`` accepted on resume changes anything in this run."""
    return not (config.run.eval_only and key.startswith(TRAINING_ONLY))


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)
