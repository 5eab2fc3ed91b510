"""A rank ensemble of estimators: the vote of several zero-cost proxies (Abdelfattah et al., "Zero-Cost Proxies
for Lightweight NAS", ICLR 2021, reference SamsungLabs/zero-cost-nas: a majority vote of synflow, jacob_cov and
snip beat each of them) and the combination of many proxies with size in NAS-Bench-Suite-Zero (Krishnakumar et
al., NeurIPS 2022 Datasets and Benchmarks; automl/NASLib ``naslib/predictors/zerocost.py``), here combined
by AZ-NAS's non-linear rank aggregation (:mod:`search.estimators.rank`): sum over the members of
log(rank / m), each member's score of a cell ranked against its scores of ``ESTIMATORS.ENSEMBLE.REFERENCE_CELLS``
cells drawn by the seed. A cell must be good by every member to score well (one bad rank costs much more
than a good one gains).

``ESTIMATORS.ENSEMBLE.MEMBERS``: the members' registered names, comma-separated (any estimator but another
ensemble); each is built from the same config and prepared with the same data and seed."""

from __future__ import annotations

from typing import Any

from fvcore.common.config import CfgNode

from nasnet_det.space import Genotype
from search.base_config import require
from search.estimators.base import ESTIMATORS, Estimator, build_estimator
from search.estimators.rank import DEFAULT_REFERENCE_CELLS, RankAggregateEstimator, estimator_node
from search.reward import ChildData

#: size, two data-free / single-pass proxies of different kinds and two of the 2023 proxies: cheap (about a
#: second a cell together at the default child network) and of different kinds (size, weights' flow,
#: activation patterns, gradient statistics, feature correlation)
DEFAULT_MEMBERS = "params,synflow,naswot,zico,meco"


def member_names(cfg: CfgNode) -> list[str]:
    """The ensemble's members, in order, from ``ESTIMATORS.ENSEMBLE.MEMBERS``."""
    return [n.strip() for n in str(cfg.ESTIMATORS.ENSEMBLE.MEMBERS).split(",") if n.strip()]


@ESTIMATORS.register()
class Ensemble(RankAggregateEstimator):
    name = "ensemble"
    config_node = "ESTIMATORS.ENSEMBLE"
    node_name = "ENSEMBLE"

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        # the ensemble estimator (search/estimators/ensemble.py): MEMBERS (registered estimators, comma-separated)
        # each ranked against its scores of REFERENCE_CELLS uniformly drawn cells, log(rank / m) summed
        e = estimator_node(cfg, "ENSEMBLE")
        e.MEMBERS = DEFAULT_MEMBERS
        e.REFERENCE_CELLS = DEFAULT_REFERENCE_CELLS

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        super().check_config(cfg)
        names, value = member_names(cfg), cfg.ESTIMATORS.ENSEMBLE.MEMBERS
        key = "ESTIMATORS.ENSEMBLE.MEMBERS"
        require(isinstance(value, str) and len(names) >= 2, key, value,
                "at least 2 registered estimators, comma-separated")
        require(len(set(names)) == len(names), key, value, "distinct estimators")
        for n in names:
            require(n in ESTIMATORS.names(), key, value, f"registered estimators ({n!r} is not one of "
                    f"{', '.join(ESTIMATORS.names())})")
            require(not issubclass(ESTIMATORS.lookup(n), Ensemble), key, value, "no ensemble among its members")

    @classmethod
    def identity(cls, cfg: CfgNode) -> dict[str, Any]:
        """Its node and what each member's scores depend on (a supernet member's ``ONESHOT``, ...)."""
        out = super().identity(cfg)
        for n in member_names(cfg):
            out.update(ESTIMATORS.lookup(n, key="ESTIMATORS.ENSEMBLE.MEMBERS").identity(cfg))
        return out

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.members: list[Estimator] = [build_estimator(n, cfg, key="ESTIMATORS.ENSEMBLE.MEMBERS")
                                         for n in member_names(cfg)]
        self.needs_data = any(m.needs_data for m in self.members)

    def prepare(self, data: ChildData | None, seed: int) -> None:
        for m in self.members:
            m.prepare(data, seed)
        super().prepare(data, seed)  # scores the reference cells with the prepared members

    def components(self, genotype: Genotype) -> dict[str, float]:
        return {m.name: float(m.score(genotype)) for m in self.members}
