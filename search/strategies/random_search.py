"""``SEARCH.STRATEGY random``: every valid option of every decision equally likely; learns nothing."""

from __future__ import annotations

import torch

from search.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register()
class RandomSearch(Strategy):
    name = "random"

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        return self.space.sample(n, generator), None
