"""Search strategies: the :class:`~search.strategies.base.Strategy` interface, one module per strategy, and
the registry ``SEARCH.STRATEGY`` names are looked up in (:mod:`search.strategies.registry`)."""
