"""``SEARCH.STRATEGY random``: every valid option of every decision equally likely; learns nothing."""

from __future__ import annotations

import torch

from search.controller import sample_uniform
from search.strategies.base import Strategy


class RandomSearch(Strategy):
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        return sample_uniform(n, self.num_blocks, generator), None
