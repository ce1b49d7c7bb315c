"""A controlled study of RGSA and RGTR on feature-level tasks with a known answer (docs/method_study.md).

Features stand in for a backbone's output, so the tasks isolate what the modules are for:

- **spatial** (RGSA): a feature map of 16 positions of which 3 hold the person (identity vector +
  noise) and 13 hold background clutter: a camera mean plus a per-image background vector three times
  the identity's scale, shared by the clutter positions of that image. The clutter dominates the mean
  of the positions, and it is told apart from the person only by how the positions relate to each
  other (it is the large group of near-equal positions), not by any fixed direction.
- **temporal** (RGTR): clips of 8 frame features of which 3 are occluded: replaced by clutter (a
  camera mean plus a random vector three times the identity's scale), which drags the temporal mean.

Each module is trained with a linear identity classifier on 40 identities and evaluated on 20 unseen
ones, queries seen by camera 0 and the gallery by camera 1, by cosine mAP. Seeds are fixed; the
margins asserted are a fraction of those measured (docs/method_study.md gives the measured values).
"""

from __future__ import annotations

import pytest
import torch

import fastrel

C = 32  # feature channels
TRAIN_IDS, TEST_IDS = 40, 20
BATCH = 64


def mean_average_precision(query: torch.Tensor, query_ids: torch.Tensor, gallery: torch.Tensor,
                           gallery_ids: torch.Tensor) -> float:
    """Cosine-similarity mAP of every query against the gallery."""
    scores = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).t()
    precisions = []
    for row, identity in zip(scores, query_ids):
        hits = (gallery_ids[row.argsort(descending=True)] == identity).double()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        precisions.append((precision * hits).sum() / hits.sum())
    return torch.stack(precisions).mean().item()


class World:
    """Identity vectors and camera means, fixed by a seed."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.identities = torch.randn(TRAIN_IDS + TEST_IDS, C, generator=self.gen)
        self.cameras = 2 * torch.randn(3, C, generator=self.gen)

    def batch(self, ids: torch.Tensor, cameras: torch.Tensor, items: int, informative: int, per_image: bool):
        """(B, items, C) sets: `informative` items of identity + noise among clutter, and the mask of those.

        per_image: the clutter items of one set share one background vector (a feature map's
        background); otherwise each clutter item has its own (an occluder in one frame).
        """
        B, gen = len(ids), self.gen
        person = self.identities[ids][:, None, :] + 0.3 * torch.randn(B, items, C, generator=gen)
        spread = torch.randn(B, 1 if per_image else items, C, generator=gen)
        clutter = self.cameras[cameras][:, None, :] + 3 * spread + 0.3 * torch.randn(B, items, C, generator=gen)
        keep = torch.rand(B, items, generator=gen).argsort(dim=1) < informative
        return torch.where(keep[..., None], person, clutter), keep

    def train_batch(self):
        ids = torch.randint(0, TRAIN_IDS, (BATCH,), generator=self.gen)
        return ids, torch.randint(0, 3, (BATCH,), generator=self.gen)

    def test_split(self):
        """Every unseen identity twice as a query (camera 0) and twice in the gallery (camera 1)."""
        ids = torch.arange(TRAIN_IDS, TRAIN_IDS + TEST_IDS).repeat(2)
        return ids, torch.zeros_like(ids), torch.ones_like(ids)


def train(module: torch.nn.Module, features, world: World, steps: int) -> None:
    """Adam on identity cross-entropy through a linear classifier over the module's output."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(C, TRAIN_IDS)
    optimizer = torch.optim.Adam([*module.parameters(), *classifier.parameters()], lr=3e-3)
    module.train()
    for _ in range(steps):
        ids, cameras = world.train_batch()
        loss = torch.nn.functional.cross_entropy(classifier(features(ids, cameras)), ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()


def test_rgsa_attends_to_the_informative_positions_and_retrieves_where_average_pooling_cannot():
    world = World(seed=0)
    informative, positions = 3, 16

    def maps(ids, cameras):
        x, keep = world.batch(ids, cameras, positions, informative, per_image=True)
        return x.transpose(1, 2).reshape(len(ids), C, 4, 4), keep

    torch.manual_seed(0)
    rgsa = fastrel.RGSA(C, 16, 8)
    train(rgsa, lambda ids, cameras: rgsa(maps(ids, cameras)[0]), world, steps=150)

    ids, query_cam, gallery_cam = world.test_split()
    (query, keep), (gallery, _) = maps(ids, query_cam), maps(ids, gallery_cam)
    with torch.no_grad():
        query_feature, attention = rgsa(query, return_attention=True)
        gallery_feature = rgsa(gallery)
    mass = (attention.flatten(1) * keep).sum(dim=1).mean().item()
    rgsa_map = mean_average_precision(query_feature, ids, gallery_feature, ids)
    pooled_map = mean_average_precision(query.mean(dim=(2, 3)), ids, gallery.mean(dim=(2, 3)), ids)
    assert mass > 0.6, f"attention on the informative positions {mass:.2f} (uniform {informative / positions:.2f})"
    assert pooled_map < 0.3, f"average pooling mAP {pooled_map:.2f}: the clutter should dominate the mean"
    assert rgsa_map > pooled_map + 0.4, f"RGSA mAP {rgsa_map:.2f} vs average pooling {pooled_map:.2f}"


def test_rgtr_clip_feature_retrieves_better_than_the_temporal_mean_under_occlusion():
    world = World(seed=1)
    frames, occluded = 8, 3

    def clips(ids, cameras):
        return world.batch(ids, cameras, frames, frames - occluded, per_image=False)[0]

    torch.manual_seed(0)
    rgtr = fastrel.RGTR(C, 16, 8)
    train(rgtr, lambda ids, cameras: rgtr(clips(ids, cameras))[0], world, steps=300)

    ids, query_cam, gallery_cam = world.test_split()
    query, gallery = clips(ids, query_cam), clips(ids, gallery_cam)
    with torch.no_grad():
        rgtr_map = mean_average_precision(rgtr(query)[0], ids, rgtr(gallery)[0], ids)
    mean_map = mean_average_precision(query.mean(dim=1), ids, gallery.mean(dim=1), ids)
    assert rgtr_map > mean_map + 0.08, f"RGTR mAP {rgtr_map:.2f} vs temporal mean {mean_map:.2f}"


@pytest.mark.parametrize("task", ["spatial", "temporal"])
def test_the_tasks_have_the_answer_they_are_built_with(task):
    # Oracle: pooling only the informative items retrieves almost perfectly, so what the modules
    # reach is the task's signal, and what the plain mean misses is lost to the clutter.
    world = World(seed=0)
    ids, query_cam, gallery_cam = world.test_split()
    per_image = task == "spatial"
    items, informative = (16, 3) if per_image else (8, 5)
    (query, q_keep), (gallery, g_keep) = (
        world.batch(ids, cam, items, informative, per_image) for cam in (query_cam, gallery_cam)
    )
    oracle = mean_average_precision((query * q_keep[..., None]).sum(1), ids, (gallery * g_keep[..., None]).sum(1), ids)
    assert oracle > 0.95
