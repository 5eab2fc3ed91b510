"""Every strategy ``SEARCH.STRATEGY`` can name. A new strategy is a module of this package (a
:class:`~search.strategies.base.Strategy` subclass) plus its line below."""

from search.strategies.base import StrategyRegistry
from search.strategies.oneshot import OneShot
from search.strategies.ppo import PPO
from search.strategies.predictor import Predictor
from search.strategies.random_search import RandomSearch
from search.strategies.reinforce import Reinforce
from search.strategies.zero_cost import ZeroCost

STRATEGIES = StrategyRegistry()
STRATEGIES.register("ppo")(PPO)
STRATEGIES.register("reinforce")(Reinforce)
STRATEGIES.register("random")(RandomSearch)
STRATEGIES.register(OneShot.name)(OneShot)
STRATEGIES.register("zero_cost")(ZeroCost)
STRATEGIES.register("predictor")(Predictor)
