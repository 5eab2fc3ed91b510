"""Search strategies: the :class:`~search.strategies.base.Strategy` interface and its registry
:data:`~search.strategies.base.STRATEGIES`, and one module per strategy. Every module of this package is
imported here, so a new strategy is its file."""

import sys

from nasnet_det.utils.registry import import_modules
from search.strategies.base import STRATEGIES, Strategy, resolve_strategies

import_modules(sys.modules[__name__])

__all__ = ["STRATEGIES", "Strategy", "resolve_strategies"]
