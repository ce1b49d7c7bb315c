"""``python -m train --config configs/X.yaml [key.sub=value ...]``: train, then evaluate.

Works the same in one process and under ``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on
GPU). Writes, under ``run.output``: config.yaml, last.pt (each epoch), tensorboard/, and
eval/{metrics.json, cmc.png, ranking.png}.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from train import distributed
from train.checkpoint import CheckpointError
from train.config import Config, ConfigError, dump, load_config, validate
from train.engine import CHECKPOINT_NAME, Trainer, resolve_device, takes_effect
from train.evaluate import evaluate_model, summary_line
from train.model import build_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(config: Config):
    """The dataset of ``data.name``; the synthetic set is generated (by rank 0) when missing."""
    from train.data import generate_synthetic, load_dataset

    root = Path(config.data.root)
    if config.data.name == "synthetic" and not (root / "info" / "query_IDX.mat").is_file():
        if distributed.rank() == 0:
            generate_synthetic(root, seed=config.run.seed)
        distributed.barrier()
    return load_dataset(config.data.name, root, split_id=config.data.split_id, protocol=config.data.protocol)


def train_loader(dataset, config: Config, device: torch.device) -> DataLoader:
    from train.data import ClipDataset, PKSampler, build_transform

    world = distributed.world_size()
    if config.data.P % world:
        raise ValueError(
            f"data.P: expected a multiple of the number of processes ({world}) so each rank holds "
            f"P/{world} identities of the global batch, got {config.data.P}"
        )
    per_rank = config.data.P // world
    clips = ClipDataset(
        dataset.train,
        config.data.seq_len,
        "random",
        build_transform(config.data.height, config.data.width, train=True),
    )
    sampler = PKSampler(
        [t.pid for t in dataset.train],
        per_rank,
        config.data.K,
        seed=config.run.seed,
        rank=distributed.rank(),
        world_size=world,
    )
    return DataLoader(
        clips,
        batch_size=per_rank * config.data.K,
        sampler=sampler,
        num_workers=config.data.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )


def run(config: Config, resume: str | None = None) -> dict:
    """Train (unless ``run.eval_only``) and evaluate; the metrics (on every rank).

    The whole config is validated before anything runs, so a bad evaluation setting fails now,
    not after training."""
    validate(config)
    device = resolve_device(config.run.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank, world = distributed.setup(device, config.run.ddp_timeout_minutes)
    if rank == 0:
        group = f"{torch.distributed.get_backend()}, {world} process(es)" if distributed.initialized() else "none"
        amp = "bf16" if config.run.amp and device.type == "cuda" else "off"
        print(f"device {device}; process group {group}; autocast {amp}", flush=True)
    seed_everything(config.run.seed + rank)
    output = Path(config.run.output)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
    dataset = load_data(config)
    if rank == 0:
        print(dataset.summary(), flush=True)
    model = build_model(config.model, dataset.num_train_pids)
    trainer = Trainer(
        model,
        train_loader(dataset, config, device),
        config,
        device,
        output,
        evaluate=lambda m, epoch: _periodic(m, dataset, config, device, epoch),
    )
    if resume is not None:
        path = Path(resume) if resume else output / CHECKPOINT_NAME
        changes = trainer.resume(path, restore_rng=not config.run.eval_only)
        if rank == 0:
            print(f"resumed from {path} at epoch {trainer.epoch}", flush=True)
            for key, old, new in changes:
                effect = "takes effect" if takes_effect(key, config) else "no effect: nothing trains"
                print(f"  config {key}: {old!r} -> {new!r} ({effect})", flush=True)
    if rank == 0:
        (output / "config.yaml").write_text(dump(config))
    start = time.perf_counter()
    if not config.run.eval_only:
        trainer.fit()
    train_seconds = time.perf_counter() - start
    metrics = evaluate_model(trainer.model, dataset, config, device, output / "eval", label=config.model.head)
    trainer.close()
    metrics["train_seconds"] = train_seconds
    if rank == 0:
        where = f"{config.data.name} ({metrics['protocol']} protocol) / {config.model.head}"
        print(f"{where}: {summary_line(metrics)}", flush=True)
    return metrics


def _periodic(model, dataset, config: Config, device, epoch: int) -> dict:
    metrics = evaluate_model(model, dataset, config, device)
    return {"eval/mAP": metrics["mAP"], "eval/rank1": metrics["cmc"][0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file over the defaults (train/config.py)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (default: <run.output>/last.pt)",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.epochs=10 model.head=avgpool")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        parser.error(str(error))
    try:
        run(config, args.resume)
    except (ConfigError, CheckpointError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
