"""Test-time features, distances and metrics for a trained model.

Every rank extracts the features of a contiguous shard of the tracklets; the shards are gathered
in rank order, so the result equals a one-process extraction. A tracklet's feature is the mean of
its chunk features (``eval.mode = "chunks"``) or RGTR run once over all of its frames
(``"all"``). Distances are cosine distances of L2-normalised features.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from train import distributed
from train.config import EVAL_MODES, Config, EvalConfig
from train.data.temporal import evenly
from train.metrics import evaluate
from train.rerank import k_reciprocal_rerank

Tensor = torch.Tensor


@torch.no_grad()
def tracklet_feature(model: nn.Module, frames: Tensor, config: EvalConfig, device: torch.device) -> Tensor:
    """The (C,) embedding of one tracklet from its frames (N, 3, H, W)."""
    if config.mode not in EVAL_MODES:
        raise ValueError(f"eval.mode: expected one of {list(EVAL_MODES)}, got {config.mode!r}")
    if config.mode == "all":
        clip = frames[evenly(len(frames), config.max_frames)]
        return model(clip[None].to(device)).embedding[0].float().cpu()
    L = config.chunk_len
    n_chunks = math.ceil(len(frames) / L)
    padded = frames.new_zeros((n_chunks * L, *frames.shape[1:]))
    padded[: len(frames)] = frames
    clips = padded.view(n_chunks, L, *frames.shape[1:])
    lengths = torch.full((n_chunks,), L)
    lengths[-1] = len(frames) - (n_chunks - 1) * L
    embeddings = []
    for start in range(0, n_chunks, config.batch_size):
        part = slice(start, start + config.batch_size)
        needs_lengths = bool((lengths[part] < L).any())
        out = model(clips[part].to(device), lengths=lengths[part] if needs_lengths else None)
        embeddings.append(out.embedding.float().cpu())
    return torch.cat(embeddings).mean(dim=0)


def extract_features(
    model: nn.Module,
    tracklets: Sequence,
    transform,
    config: Config,
    device: torch.device,
    progress: bool = False,
) -> Tensor:
    """(len(tracklets), C) embeddings, computed shard by shard over the ranks and gathered in order."""
    from train.data import ClipDataset

    rank, world = distributed.rank(), distributed.world_size()
    n = len(tracklets)
    shard = list(tracklets[rank * n // world : (rank + 1) * n // world])
    dataset = ClipDataset(shard, config.eval.chunk_len, "all", transform)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=config.data.workers,
        generator=torch.Generator().manual_seed(0),
    )
    model.eval()
    features = []
    items = loader
    if progress and rank == 0:
        from tqdm import tqdm

        items = tqdm(loader, total=len(dataset), desc="features", leave=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.run.amp and device.type == "cuda")
    with autocast:
        for frames, _, _ in items:
            features.append(tracklet_feature(model, frames, config.eval, device))
    local = torch.stack(features) if features else torch.empty(0)
    parts = [p for p in distributed.gather_objects(local) if p.numel()]
    return torch.cat(parts)


def cosine_distance(x: Tensor, y: Tensor) -> Tensor:
    x, y = F.normalize(x.float(), dim=1), F.normalize(y.float(), dim=1)
    return 1.0 - x @ y.t()


def evaluate_model(
    model: nn.Module,
    dataset,
    config: Config,
    device: torch.device,
    output: Path | None = None,
    label: str = "model",
) -> dict:
    """Metrics of ``model`` on ``dataset``'s query/gallery (every rank gets them). With ``output``,
    rank 0 writes metrics.json, cmc.png and ranking.png there."""
    from train.data import build_transform

    transform = build_transform(config.data.height, config.data.width, train=False)
    progress = config.run.progress
    qf = extract_features(model, dataset.query, transform, config, device, progress)
    gf = extract_features(model, dataset.gallery, transform, config, device, progress)
    metrics: dict = {}
    if distributed.rank() == 0:
        q_pids = np.array([t.pid for t in dataset.query])
        g_pids = np.array([t.pid for t in dataset.gallery])
        q_cams = np.array([t.camid for t in dataset.query])
        g_cams = np.array([t.camid for t in dataset.gallery])
        distmat = cosine_distance(qf, gf).numpy()
        metrics = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, protocol=dataset.protocol)
        if config.eval.rerank:
            reranked = k_reciprocal_rerank(
                distmat,
                cosine_distance(qf, qf).numpy(),
                cosine_distance(gf, gf).numpy(),
                config.eval.k1,
                config.eval.k2,
                config.eval.lambda_value,
            )
            metrics["rerank"] = evaluate(reranked, q_pids, g_pids, q_cams, g_cams, protocol=dataset.protocol)
        if output is not None:
            from train import plots

            output = Path(output)
            output.mkdir(parents=True, exist_ok=True)
            (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            plots.plot_cmc({label: metrics["cmc"]}, output / "cmc.png")
            plots.plot_ranking(model, dataset, distmat, transform, config, device, output / "ranking.png")
    return distributed.gather_objects(metrics)[0]


def summary_line(metrics: dict) -> str:
    cmc = metrics["cmc"]
    ranks = ", ".join(f"rank-{r} {100 * cmc[r - 1]:.1f}" for r in (1, 5, 10) if r <= len(cmc))
    return f"mAP {100 * metrics['mAP']:.1f}, mINP {100 * metrics['mINP']:.1f}, {ranks}"
