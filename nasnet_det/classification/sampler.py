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
