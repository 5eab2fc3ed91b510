"""The ``supernet`` and ``supernet_bn`` estimators: today's one-shot search (``SEARCH.STRATEGY oneshot``,
controller-sampled paths) run by the search engine in a temporary folder, its supernet scoring the cells
(the other supernet estimators are in :mod:`search.estimators.supernet`).

They run the whole engine, which imports the strategies, one of which (``zero_cost``) builds estimators: so
they live above the engine, outside the estimator package, and :mod:`search` (the package's ``__init__``)
imports this module, which registers them whenever any module of the search is imported."""

from __future__ import annotations

import tempfile

from search.estimators.base import ESTIMATORS
from search.estimators.supernet import SupernetEstimator
from search.runner import SearchRunner
from search.supernet import SuperNet


@ESTIMATORS.register()
class OneShotSupernet(SupernetEstimator):
    """Today's one-shot search (controller-sampled paths, ONESHOT.POLICY), its supernet as the estimator. Its
    paths' loose ends are block states only, so it cannot score a cell that concatenates a cell input."""

    name = "supernet"
    loose_inputs = False

    def train_supernets(self) -> list[SuperNet]:
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.SEARCH.STRATEGY, cfg.SEARCH.SEED = "oneshot", self.seed
        cfg.ONESHOT.BN_RECALIBRATION_BATCHES = 0
        cfg.SEARCH.MAX_EVALS_THIS_RUN = 0  # the outer run's limit is not this supernet's: it trains to its end
        with tempfile.TemporaryDirectory(prefix="supernet_estimator_") as out:
            search = SearchRunner(cfg, out, progress=False, fresh=True, data=self.data)
            search.run()
            trained = search.states["oneshot"].strategy.supernet.state_dict()
        net = self.trainer.new_supernet()
        # the search's supernet keeps no running statistics; a recalibrating one gets fresh buffers
        net.load_state_dict(trained, strict=not self.recalibrate)
        return [net]


@ESTIMATORS.register()
class OneShotSupernetRecalibrated(OneShotSupernet):
    name, recalibrate = "supernet_bn", True
