"""``SEARCH.STRATEGY ppo``: the controller trained with PPO's clipped surrogate (the paper's choice)."""

from search.strategies.controller_policy import ControllerPolicy


class PPO(ControllerPolicy):
    algorithm = "ppo"
