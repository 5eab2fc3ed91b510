"""Sharded deterministic sampling: the shuffle of an epoch depends only on (seed, epoch)."""

from __future__ import annotations

import torch


class ShardedEpochSampler(torch.utils.data.Sampler[int]):
    """This process's share of a shuffle that depends only on (seed, epoch), minus already-consumed samples.

    The permutation is padded (by wrapping) to a multiple of ``world_size`` and dealt round-robin, as
    DistributedSampler does; ``skip`` drops the first samples of this shard so a resumed run continues
    mid-epoch exactly where the interrupted one stopped. ``shuffle=False`` gives the identity order
    without padding (for evaluation, so each example is counted once).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, skip: int = 0):
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.epoch, self.shuffle, self.skip = seed, epoch, shuffle, skip

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        total = -(-self.size // self.world_size) * self.world_size
        order += order[: total - self.size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        per_rank = len(range(self.rank, self.size, self.world_size)) if not self.shuffle \
            else -(-self.size // self.world_size)
        return max(0, per_rank - self.skip)


# An odd multiplier (2^32 / golden ratio): rank x it mod 2^32 differs for every rank below 2^32.
_RANK_MULTIPLIER = 0x9E3779B9


def train_loader_seed(seed: int, epoch: int, skip: int, rank: int) -> int:
    """The seed of a process's training DataLoader generator, from which its workers' RNG seeds are drawn.

    Each process must draw its own augmentation (random crops, flips, cutouts): with one seed for all, every
    process's workers would draw the same random numbers. Rank 0 keeps the seed it always had (single-process
    runs and their resume are unchanged). torch's CPU generator (mt19937) uses only a seed's low 32 bits, so the
    rank term lives there: no two processes share a seed at the same epoch and position."""
    return seed * 1_000_003 + epoch * 7919 + skip + (rank * _RANK_MULTIPLIER) % 2 ** 32
