"""``SEARCH.STRATEGY oneshot``: the controller of the weight-sharing search (:mod:`search.oneshot`), trained
by ``ONESHOT.POLICY`` on rewards scored with the supernet's shared weights."""

from __future__ import annotations

from fvcore.common.config import CfgNode

from search.strategies.controller_policy import ControllerPolicy


class OneShot(ControllerPolicy):
    weight_sharing = True

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg, str(cfg.ONESHOT.POLICY))
