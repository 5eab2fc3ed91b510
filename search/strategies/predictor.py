"""``SEARCH.STRATEGY predictor``: a BANANAS-style predictor-guided search on the asynchronous queue.

The first ``SEARCH.PREDICTOR.INITIAL`` children are uniform random cells. From then on, every
``SEARCH.BATCH_SIZE`` finished children an ensemble of ``ENSEMBLE`` ridge regressions (scikit-learn,
``RIDGE_ALPHA``), each on a bootstrap resample, is fitted to all finished children (:func:`encode`: the
one-hot of the 2 x 5B decisions and each cell's op counts -> reward); each new child is chosen from
``MUTATIONS`` mutants (1 to 3 decisions re-drawn) of each of the ``TOP_PARENTS`` best children so far plus
as many uniform random cells, by the upper confidence bound ``mean + KAPPA * std`` over the ensemble
(BANANAS's ensemble of networks estimates its uncertainty the same way). A cell already journaled is never
proposed again.

Why ridge and not a forest or MLPs: with the few tens of children a CPU search affords, a linear model of
this encoding ranked held-out cells better (SyntheticOpReward, 40 children, B=2: Spearman 0.63 against 0.36
for a 50-tree random forest on the same features, 0.57 on the op counts alone; 2026-12-02).

State: the finished children it learned from (``state_dict``); the ensemble is refitted from them, so a
resumed search proposes what the uninterrupted one would."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from fvcore.common.config import CfgNode

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import OPS
from nasnet_det.utils.errors import require_int
from search.base_config import require
from search.journal import Evaluation
from search.strategies.base import STRATEGIES, Strategy

if TYPE_CHECKING:
    from sklearn.linear_model import Ridge


def encode(decisions: np.ndarray, num_blocks: int) -> np.ndarray:
    """[n, 2 x 5B] decisions -> fixed-length features: the one-hot of every decision, then each cell's count
    of every op (how often it is used, wherever: lets the surrogate generalise across the slots, as the op
    features of NAS predictors do)."""
    space = SearchSpace(num_blocks)
    slots, sizes = space.slots, space.sizes
    decisions = np.asarray(decisions)
    rows = np.arange(len(decisions))[:, None]
    hot = np.zeros((len(decisions), sum(sizes)), dtype=np.float32)
    hot[rows, np.cumsum([0, *sizes[:-1]])[None, :] + decisions] = 1.0
    counts = np.zeros((len(decisions), 2, len(OPS)), dtype=np.float32)
    for j, s in enumerate(slots):
        if s.kind == "op":
            np.add.at(counts, (np.arange(len(decisions)), s.cell, decisions[:, j]), 1.0)
    return np.concatenate([hot, counts.reshape(len(decisions), -1)], 1)


@STRATEGIES.register()
class Predictor(Strategy):
    name = "predictor"
    config_node = "SEARCH.PREDICTOR"

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        # SEARCH.STRATEGY predictor (search/strategies/predictor.py, BANANAS-style): after INITIAL random children,
        # an ensemble of ENSEMBLE bootstrap ridge regressions (RIDGE_ALPHA) fitted to the finished children every
        # SEARCH.BATCH_SIZE results proposes the next ones: MUTATIONS mutants (1-3 decisions re-drawn) of each of
        # the TOP_PARENTS best children (plus as many random cells), ranked by the upper confidence bound
        # mean + KAPPA * std.
        p = cfg.SEARCH.PREDICTOR = CfgNode()
        p.INITIAL = 10
        p.TOP_PARENTS = 5
        p.MUTATIONS = 20
        p.ENSEMBLE = 10
        p.RIDGE_ALPHA = 1.0
        p.KAPPA = 0.5

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        p = cfg.SEARCH.PREDICTOR
        for key in ("INITIAL", "TOP_PARENTS", "MUTATIONS", "ENSEMBLE"):
            require_int(p[key], f"SEARCH.PREDICTOR.{key}", 1)
        for key in ("KAPPA", "RIDGE_ALPHA"):
            require(isinstance(p[key], (int, float)) and math.isfinite(p[key]) and p[key] >= 0,
                    f"SEARCH.PREDICTOR.{key}", p[key], "a finite number >= 0")

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.p, self.seed = cfg.SEARCH.PREDICTOR, int(cfg.SEARCH.SEED)
        self.decisions: list[list[int]] = []  # finished children learned from
        self.rewards: list[float] = []
        self.seen: set[tuple[int, ...]] = set()  # every cell proposed (journaled) so far
        self.members: list[Ridge] = []  # the fitted ensemble (empty until INITIAL children finished)

    def attach(self, output_dir: Path, rows: list[Evaluation]) -> None:
        self.seen = {tuple(r.decisions) for r in rows}

    # ---- the surrogate -----------------------------------------------------------------------------------
    def _fit(self) -> None:
        self.members = []
        if len(self.rewards) < max(2, int(self.p.INITIAL)):
            return
        # imported here: sklearn (with the scipy and pandas it loads) takes ~3 s to import, paid by every search
        # process that registers this strategy otherwise
        from sklearn.linear_model import Ridge

        x, y = encode(np.array(self.decisions), self.num_blocks), np.array(self.rewards)
        rng = np.random.default_rng([self.seed, len(y)])
        for _ in range(int(self.p.ENSEMBLE)):  # each member on a bootstrap resample of the children
            idx = rng.integers(0, len(y), len(y))
            self.members.append(Ridge(alpha=float(self.p.RIDGE_ALPHA)).fit(x[idx], y[idx]))

    def predict(self, decisions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std over the ensemble of the predicted reward of each row."""
        assert self.members, "fewer than SEARCH.PREDICTOR.INITIAL children finished"
        x = encode(decisions, self.num_blocks)
        each = np.stack([m.predict(x) for m in self.members])
        return each.mean(0), each.std(0)

    def update(self, decisions: torch.Tensor, logprobs: torch.Tensor | None, rewards: torch.Tensor
               ) -> dict[str, float]:
        self.decisions += decisions.tolist()
        self.rewards += [float(r) for r in rewards]
        self._fit()
        return {"children": float(len(self.rewards)), "best": max(self.rewards)}

    def state_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "rewards": self.rewards}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decisions, self.rewards = [list(d) for d in state["decisions"]], [float(r) for r in state["rewards"]]
        self._fit()

    # ---- proposals ---------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        if not self.members:  # the initial random children
            pool = self.space.sample(max(4 * n, 16), generator).tolist()
            scores = None
        else:
            order = np.argsort(-np.array(self.rewards), kind="stable")[:int(self.p.TOP_PARENTS)]
            pool = [m for i in order for m in self.space.mutate(self.decisions[i], int(self.p.MUTATIONS), generator)]
            pool += self.space.sample(len(pool), generator).tolist()
            mean, std = self.predict(np.array(pool))
            scores = mean + float(self.p.KAPPA) * std
        ranked = range(len(pool)) if scores is None else np.argsort(-scores, kind="stable")
        chosen: list[list[int]] = []
        for i in ranked:
            key = tuple(pool[i])
            if key not in self.seen:
                self.seen.add(key)
                chosen.append(pool[i])
                if len(chosen) == n:
                    break
        while len(chosen) < n:  # every proposal was journaled already: fresh random cells
            d = self.space.sample(1, generator)[0].tolist()
            if tuple(d) not in self.seen:
                self.seen.add(tuple(d))
                chosen.append(d)
        return torch.tensor(chosen, dtype=torch.long), None
