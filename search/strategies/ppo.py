"""``SEARCH.STRATEGY ppo``: the controller trained with PPO's clipped surrogate (the paper's choice)."""

from search.strategies.base import STRATEGIES
from search.strategies.controller_policy import ControllerPolicy


@STRATEGIES.register()
class PPO(ControllerPolicy):
    name = "ppo"
    algorithm = "ppo"
