"""Pictures of an evaluation: CMC curves, and the top-ranked gallery tracklets of a few queries
with RGSA's attention maps laid over their frames (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from train.config import Config  # noqa: E402
from train.data.temporal import evenly  # noqa: E402


def plot_cmc(curves: dict[str, list[float]], path: Path) -> None:
    """One CMC curve per label (rank on x, matching rate in % on y)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, cmc in curves.items():
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, 100 * np.asarray(cmc), marker="o", markersize=3, label=f"{label} (R1 {100 * cmc[0]:.1f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title("CMC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def _frames_and_attention(model, tracklet, transform, config: Config, device, count: int):
    """``count`` evenly spaced frames of ``tracklet`` as display images and their attention maps
    (None for a model without RGSA), computed over an evenly sampled clip."""
    picks = evenly(len(tracklet.frames), config.eval.chunk_len).tolist()
    images = [Image.open(tracklet.frames[i]).convert("RGB") for i in picks]
    clip = transform(images)[None].to(device)
    out = model(clip, return_attention=True)
    shown = evenly(len(picks), count).tolist()
    size = (config.data.width, config.data.height)
    display = [np.asarray(images[i].resize(size)) for i in shown]
    if out.attention is None:
        return display, [None] * len(shown)
    maps = F.interpolate(out.attention[0].float()[:, None], size=size[::-1], mode="bilinear", align_corners=False)
    maps = maps[:, 0].cpu().numpy()
    return display, [maps[i] for i in shown]


def plot_ranking(model, dataset, distmat: np.ndarray, transform, config: Config, device, path: Path) -> None:
    """Rows of queries (a few frames each) and their top-k gallery tracklets; green = same identity.
    Attention (where the model has RGSA) is drawn over each frame."""
    model.eval()
    n_q = min(config.eval.num_queries_shown, len(dataset.query))
    top_k = min(config.eval.top_k_shown, len(dataset.gallery))
    query_frames = 3
    queries = np.linspace(0, len(dataset.query) - 1, n_q).round().astype(int)
    cols = query_frames + top_k
    fig, axes = plt.subplots(n_q, cols, figsize=(1.3 * cols, 2.6 * n_q), squeeze=False)
    for row, qi in enumerate(queries):
        query = dataset.query[qi]
        q_imgs, q_maps = _frames_and_attention(model, query, transform, config, device, query_frames)
        cells = [
            (img, amap, f"query\npid {query.pid} cam {query.camid}", "black")
            for img, amap in zip(q_imgs, q_maps, strict=True)
        ]
        order = np.argsort(distmat[qi], kind="stable")
        keep = [
            g for g in order if not (dataset.gallery[g].pid == query.pid and dataset.gallery[g].camid == query.camid)
        ]
        for rank, gi in enumerate(keep[:top_k], start=1):
            item = dataset.gallery[gi]
            imgs, maps = _frames_and_attention(model, item, transform, config, device, 1)
            colour = "limegreen" if item.pid == query.pid else "red"
            cells.append(
                (
                    imgs[0],
                    maps[0],
                    f"#{rank} d={distmat[qi, gi]:.2f}\npid {item.pid} cam {item.camid}",
                    colour,
                )
            )
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(cells):
                ax.axis("off")
                continue
            img, amap, title, colour = cells[col]
            ax.imshow(img)
            if amap is not None:
                ax.imshow(amap, cmap="jet", alpha=0.45)
            ax.set_title(title, fontsize=6)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5 if colour != "black" else 0.5)
    fig.suptitle("queries (left) and top-ranked gallery tracklets, attention overlaid", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
