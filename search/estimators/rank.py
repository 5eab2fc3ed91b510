"""Non-linear rank aggregation of several scores of a cell (AZ-NAS, Lee & Ham, CVPR 2024): the sum over the
components of log(rank / m), the rank ascending (the best of m cells has rank m, so its term is 0). The
reference code ranks a whole population at once (cvlab-yonsei/AZ-NAS ``ImageNet_MBV2/evolution_search_az.py``:
``np.log(stats.rankdata(scores) / len(scores))`` per component, summed); an estimator scores one cell at a time,
so here a cell is ranked against a fixed reference population of ``REFERENCE_CELLS`` cells drawn by the seed in
``prepare``: a cell's aggregate does not depend on which other cells are scored, and the search can resume.

:class:`RankAggregateEstimator` is the base of ``az_nas`` and ``ensemble``; each gives its components of a
cell (:meth:`RankAggregateEstimator.components`). Also here: the helpers of the estimators' own config nodes
(``ESTIMATORS.<NAME>``: :func:`estimator_node`)."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from fvcore.common.config import CfgNode

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import Genotype
from nasnet_det.utils.errors import require_int
from search.estimators.base import Estimator
from search.reward import ChildData

DEFAULT_REFERENCE_CELLS = 32


def estimator_node(cfg: CfgNode, name: str) -> CfgNode:
    """The node ``ESTIMATORS.<name>`` of an estimator's own settings, created (with ``ESTIMATORS``) if missing."""
    if "ESTIMATORS" not in cfg:
        cfg.ESTIMATORS = CfgNode()
    cfg.ESTIMATORS[name] = CfgNode()
    return cfg.ESTIMATORS[name]


def continuous_rank(value: float, reference: Sequence[float]) -> float:
    """The rank (1 = worst) ``value`` takes among ``reference`` plus itself, in [1, len(reference) + 1]: one
    plus the number of reference values below it, a tie counting half (the average rank ``rankdata`` gives
    tied values), interpolated linearly between neighbouring reference values so that two cells falling
    between the same two reference values keep their order. NaN ranks as the worst (the reference code maps
    a NaN component to -inf)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = np.where(np.isnan(ref), -np.inf, ref)
    v = -math.inf if math.isnan(value) else float(value)
    values, counts = np.unique(ref, return_counts=True)
    below_at = np.cumsum(counts) - counts + counts / 2.0  # reference values below each distinct one, ties half
    if v in values:
        return 1.0 + float(below_at[np.searchsorted(values, v)])
    if v < values[0]:
        return 1.0
    if v > values[-1]:
        return 1.0 + float(len(ref))
    finite = np.isfinite(values)  # interpolating needs finite neighbours; v is finite here
    lo = int(np.searchsorted(values, v)) - 1
    if not (finite[lo] and finite[lo + 1]):
        return 1.0 + float(below_at[lo] + counts[lo] / 2.0)
    t = (v - values[lo]) / (values[lo + 1] - values[lo])
    return 1.0 + float(below_at[lo] + t * (below_at[lo + 1] - below_at[lo]))


def rank_aggregate(components: Mapping[str, float], reference: Mapping[str, Sequence[float]]) -> float:
    """sum over the components of log(rank / m), m = len(reference) + 1, the rank of each component's value
    among its reference values (:func:`continuous_rank`): 0 for a cell best in every component."""
    total = 0.0
    for key, value in components.items():
        ref = reference[key]
        total += math.log(continuous_rank(value, ref) / (len(ref) + 1))
    return total


class RankAggregateEstimator(Estimator):
    """Scores a cell by :func:`rank_aggregate` of its :meth:`components` against those of ``REFERENCE_CELLS``
    uniformly drawn cells (the seed draws them and the components use the same seed, data and settings)."""

    #: the node name under ``ESTIMATORS`` holding ``REFERENCE_CELLS`` (and the subclass's own settings)
    node_name = ""

    @classmethod
    def reference_cells(cls, cfg: CfgNode) -> int:
        return int(cfg.ESTIMATORS[cls.node_name].REFERENCE_CELLS)

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        require_int(cfg.ESTIMATORS[cls.node_name].REFERENCE_CELLS, f"{cls.config_node}.REFERENCE_CELLS", 2)

    @abstractmethod
    def components(self, genotype: Genotype) -> dict[str, float]:
        """The cell's scores to aggregate, by name (higher = better for each)."""

    def prepare(self, data: ChildData | None, seed: int) -> None:
        super().prepare(data, seed)
        space = SearchSpace(int(self.cfg.SEARCH.NUM_BLOCKS))
        gen = torch.Generator().manual_seed(int(seed) * 7_919 + 23)  # not the zero_cost strategy's candidates
        cells = [space.genotype(d) for d in space.sample(self.reference_cells(self.cfg), gen).tolist()]
        scored = [self.components(g) for g in cells]
        self.reference = {k: [s[k] for s in scored] for k in scored[0]}

    def score(self, genotype: Genotype) -> float:
        assert hasattr(self, "reference"), "prepare() first"
        return rank_aggregate(self.components(genotype), self.reference)
