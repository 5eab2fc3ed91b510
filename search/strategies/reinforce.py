"""``SEARCH.STRATEGY reinforce``: the controller trained with plain REINFORCE."""

from search.strategies.controller_policy import ControllerPolicy


class Reinforce(ControllerPolicy):
    algorithm = "reinforce"
