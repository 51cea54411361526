"""Samplers that keep training crops a function of (seed, epoch, scan), also under DDP.

The paper draws one random crop from each training scan per epoch (Sec. 2.3, Table 1).
`EpochSampler` yields ``(epoch, index)`` keys that `stroke_seg.data.dataset` turns into a
seed for that crop, so a resumed run sees exactly the crops of an uninterrupted one; under
DDP (``trainer=ddp``) each process draws its own share of every epoch's crops and validates
its own share of the validation scans (`ShardSampler`). Both are `DistributedSampler`
subclasses, so Lightning uses them as they are instead of wrapping them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffles the training scans anew each epoch from (seed, epoch) alone and yields
    ``(epoch, index)`` keys, so that every crop is drawn from (seed, epoch, index) too.

    A run resumed at an epoch boundary therefore sees exactly the crops the uninterrupted
    run would have seen, with any number of data-loader workers. Lightning calls
    ``set_epoch`` at the start of every epoch.

    With ``num_replicas`` processes (DDP), process ``rank`` takes every ``num_replicas``-th
    key of the epoch's permutation, which is padded by wrapping around (as
    `DistributedSampler`) so that every process makes the same number of steps; a padded
    repeat of a scan gets the key ``(epoch, index, repeat)`` and so a crop of its own. One
    epoch is still one crop per training scan, ``num_replicas`` crops per optimiser step.
    Being a `DistributedSampler`, it is used by Lightning as it is, instead of being wrapped
    in Lightning's `DistributedSamplerWrapper`, whose padding would repeat keys (the same
    crop twice in an epoch).
    """

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            range(n),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=int(seed),
            drop_last=False,
        )
        self.n, self.seed, self.epoch = n, int(seed), 0
        self.num_samples = math.ceil(n / num_replicas) if n else 0
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        keys: list[tuple[int, ...]] = []
        for position in range(self.rank, self.total_size, self.num_replicas):
            index, repeat = int(order[position % self.n]), position // self.n
            keys.append((self.epoch, index) if repeat == 0 else (self.epoch, index, repeat))
        return iter(keys)


class ShardSampler(DistributedSampler):
    """Validation scans in order, split across DDP processes without padding: process
    ``rank`` takes indices ``rank, rank + num_replicas, ...``. With fewer scans than
    processes every process validates all of them (repeats leave the mean unchanged).
    Padding, as `DistributedSampler` does, would count some scans twice in val/dsc."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            range(n), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
        )
        self.n = n
        self.indices = list(range(n)) if n < num_replicas else list(range(rank, n, num_replicas))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
