"""The project's one registry pattern (fvcore's Registry keyed by config names)."""

import pytest

from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.registry import Registry


def test_entries_by_their_config_name_in_order_and_an_unknown_name_lists_the_known_ones():
    reg = Registry("SEARCH.STRATEGY")

    @reg.register()
    class Random:
        name = "random"

    @reg.register(name="ppo")
    class Controller:
        pass

    reg.register(lambda: None, name="fn")
    assert reg.names() == ["random", "ppo", "fn"] and len(reg) == 3
    assert reg.lookup(" PPO ") is Controller and reg.get("random") is Random
    with pytest.raises(BadInputError, match=r"^SEARCH.STRATEGY='rl': expected one of fn, ppo, random$"):
        reg.lookup("rl")
    with pytest.raises(BadInputError, match=r"^x.yaml: SEARCH.STRATEGY='rl'"):
        reg.lookup("rl", key="x.yaml: SEARCH.STRATEGY")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Random)
