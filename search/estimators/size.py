"""The size baselines every estimator must beat: the child network's parameters and mult-adds (a bigger
network trains to a better accuracy more often than not)."""

from __future__ import annotations

import torch

from nasnet_det.models.profile import count_mult_adds, count_params
from nasnet_det.space import Genotype
from search.estimators.base import ESTIMATORS, Estimator
from search.reward import build_child


class ChildNetworkEstimator(Estimator):
    """Scores a property of the search's child network (``MODEL.NASNET`` with the cell) at initialisation."""

    def child(self, genotype: Genotype) -> torch.nn.Module:
        torch.manual_seed(self.seed)  # the initial weights a score at initialisation depends on
        return build_child(genotype, self.cfg.MODEL.NASNET)


@ESTIMATORS.register()
class Params(ChildNetworkEstimator):
    name = "params"

    def score(self, genotype: Genotype) -> float:
        return float(count_params(self.child(genotype)))


@ESTIMATORS.register()
class MultAdds(ChildNetworkEstimator):
    """fvcore's multiply-accumulates of one image at ``CHILD.IMAGE_SIZE``."""

    name = "madds"

    def score(self, genotype: Genotype) -> float:
        return float(count_mult_adds(self.child(genotype), int(self.cfg.CHILD.IMAGE_SIZE)))
