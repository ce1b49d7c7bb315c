"""P×K identity sampling for metric learning, split across distributed ranks by whole identities."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[int]):
    """Yield dataset indices in batches of P identities × K tracklets, per rank.

    Each epoch every rank draws the same permutation of identities from (seed, epoch); step s gives
    rank r the identities at positions (s·W + r)·P … (s·W + r + 1)·P - 1 of it, so the ranks of one
    step hold disjoint identities. The permutation wraps around at the end so every identity is
    used each epoch and every rank yields the same number of full batches. Each identity brings K
    of its tracklets: K distinct ones, or, when it has fewer, all of them plus repeats drawn with
    replacement. Use with a DataLoader whose batch_size is P·K; `len(sampler)` is the number of
    indices one rank yields per epoch.
    """

    def __init__(
        self, pids: Sequence[int], P: int, K: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be at least 1, got P={P}, K={K}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        members: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            members.setdefault(int(pid), []).append(index)
        self.identities = sorted(members)
        self.by_identity = {pid: np.asarray(indices) for pid, indices in members.items()}
        if len(self.identities) < P * world_size:
            raise ValueError(
                f"P·world_size = {P}·{world_size} distinct identities are needed per step, "
                f"but pids has only {len(self.identities)}"
            )
        self.P, self.K, self.seed, self.rank, self.world_size = P, K, seed, rank, world_size
        self.epoch = 0

    @property
    def steps(self) -> int:
        """Batches per rank per epoch."""
        per_step = self.P * self.world_size
        return -(-len(self.identities) // per_step)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields (as DistributedSampler does)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.P * self.K

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.identities))
        needed = self.steps * self.P * self.world_size
        order = np.concatenate([order, order[: needed - len(order)]])
        # Draw K tracklets for every slot on every rank, so all ranks consume the generator alike.
        draws = []
        for slot in order:
            members = self.by_identity[self.identities[slot]]
            if len(members) >= self.K:
                draws.append(rng.choice(members, self.K, replace=False))
            else:
                refill = rng.choice(members, self.K - len(members), replace=True)
                draws.append(np.concatenate([rng.permutation(members), refill]))
        for step in range(self.steps):
            first = (step * self.world_size + self.rank) * self.P
            for slot in range(first, first + self.P):
                yield from draws[slot].tolist()
