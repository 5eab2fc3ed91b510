"""``SEARCH.STRATEGY reinforce``: the controller trained with plain REINFORCE."""

from search.strategies.base import STRATEGIES
from search.strategies.controller_policy import ControllerPolicy


@STRATEGIES.register()
class Reinforce(ControllerPolicy):
    name = "reinforce"
    algorithm = "reinforce"
