"""Search strategies: :class:`Strategy` and the registry ``SEARCH.STRATEGY`` names are looked up in. A new
strategy is one module here (a ``Strategy`` subclass under ``@STRATEGIES.register("name")``) plus its import
below."""

from search.strategies import oneshot, ppo, random_search, reinforce  # noqa: F401  (they register themselves)
from search.strategies.base import STRATEGIES, Strategy

__all__ = ["STRATEGIES", "Strategy"]
