"""Invariants of the P×K identity sampler, across ranks and epochs."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train.data import PKSampler


@st.composite
def sampler_setups(draw):
    world_size = draw(st.integers(1, 4))
    P = draw(st.integers(1, 5))
    K = draw(st.integers(1, 5))
    num_ids = draw(st.integers(P * world_size, P * world_size + 13))
    sizes = draw(st.lists(st.integers(1, 7), min_size=num_ids, max_size=num_ids))
    labels = [100 + 3 * i for i in range(num_ids)]  # arbitrary, non-contiguous pids
    pids = [label for label, size in zip(labels, sizes, strict=True) for _ in range(size)]
    random.Random(draw(st.integers(0, 999))).shuffle(pids)
    return pids, P, K, world_size, draw(st.integers(0, 2**31)), draw(st.integers(0, 50))


def batches_per_rank(pids, P, K, world_size, seed, epoch):
    out = []
    for rank in range(world_size):
        sampler = PKSampler(pids, P, K, seed=seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        out.append([indices[i : i + P * K] for i in range(0, len(indices), P * K)])
    return out


@settings(max_examples=60, deadline=None)
@given(sampler_setups())
def test_every_rank_yields_full_pk_batches_of_distinct_identities(setup):
    pids, P, K, world_size, seed, epoch = setup
    ranks = batches_per_rank(pids, P, K, world_size, seed, epoch)
    assert len({len(batches) for batches in ranks}) == 1
    for batches in ranks:
        for batch in batches:
            assert len(batch) == P * K
            groups = [batch[i : i + K] for i in range(0, P * K, K)]
            identities = [pids[g[0]] for g in groups]
            assert len(set(identities)) == P
            for group, pid in zip(groups, identities, strict=True):
                assert all(pids[i] == pid for i in group)
                members = pids.count(pid)
                assert len(set(group)) == min(K, members)


@settings(max_examples=60, deadline=None)
@given(sampler_setups())
def test_ranks_are_disjoint_per_step_and_cover_every_identity_each_epoch(setup):
    pids, P, K, world_size, seed, epoch = setup
    ranks = batches_per_rank(pids, P, K, world_size, seed, epoch)
    seen = set()
    for step in range(len(ranks[0])):
        per_rank = [{pids[i] for i in batches[step]} for batches in ranks]
        assert sum(len(s) for s in per_rank) == len(set().union(*per_rank))
        seen |= set().union(*per_rank)
    assert seen == set(pids)


@settings(max_examples=40, deadline=None)
@given(sampler_setups())
def test_every_rank_follows_the_same_permutation(setup):
    pids, P, K, world_size, seed, epoch = setup
    ranks = batches_per_rank(pids, P, K, world_size, seed, epoch)
    interleaved = [i for step in range(len(ranks[0])) for batches in ranks for i in batches[step]]
    (single,) = batches_per_rank(pids, P * world_size, K, 1, seed, epoch)
    assert interleaved == [i for batch in single for i in batch]


@settings(max_examples=30, deadline=None)
@given(sampler_setups())
def test_same_seed_and_epoch_reproduce_the_same_indices(setup):
    pids, P, K, world_size, seed, epoch = setup
    assert batches_per_rank(pids, P, K, world_size, seed, epoch) == batches_per_rank(
        pids, P, K, world_size, seed, epoch
    )


def test_epochs_and_seeds_change_the_order():
    pids = [i // 3 for i in range(90)]
    sampler = PKSampler(pids, 4, 2, seed=7)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and sorted({pids[i] for i in first}) == sorted({pids[i] for i in second})
    assert list(PKSampler(pids, 4, 2, seed=8)) != first


def test_length_counts_indices_per_rank_with_wraparound():
    pids = [i // 2 for i in range(2 * 10)]  # 10 identities
    sampler = PKSampler(pids, 3, 4, seed=0, rank=1, world_size=2)
    assert sampler.steps == 2 and len(sampler) == 2 * 3 * 4 == len(list(sampler))


def test_dataloader_batches_hold_p_identities_of_k():
    pids = [i % 9 for i in range(40)]
    dataset = torch.utils.data.TensorDataset(torch.tensor(pids))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3 * 2, sampler=PKSampler(pids, 3, 2, seed=1))
    batches = [b[0].tolist() for b in loader]
    assert len(batches) == 3
    for batch in batches:
        assert len(set(batch)) == 3 and all(batch.count(p) == 2 for p in batch)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"P": 0, "K": 2}, "P and K"),
        ({"P": 2, "K": 0}, "P and K"),
        ({"P": 3, "K": 2, "world_size": 2}, "only 5"),
        ({"P": 1, "K": 2, "rank": 2, "world_size": 2}, "rank"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(list(range(5)), seed=0, **kwargs)
