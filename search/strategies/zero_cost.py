"""``SEARCH.STRATEGY zero_cost``: rank ``SEARCH.ZERO_COST.CANDIDATES`` uniformly drawn cells by a cheap
estimator (``SEARCH.ZERO_COST.PROXY``: a zero-cost proxy or a size baseline of :mod:`search.estimators` at
initialisation, or a supernet estimator -- ``fewshot_bn`` makes this the few-shot supernet search -- whose
supernets are trained once before the ranking), then train the ``SEARCH.BUDGET`` best-ranked as ordinary
children, so the found cell (``best_genotype_zero_cost.json``) is the best of them by its real reward, journaled
like any child.

The candidates and the seed come from ``SEARCH.SEED``; the proxy's scores are kept in
``zero_cost_scores.json`` as they are computed (a rerun continues the scoring, then the queue, from where
it stopped)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode
from tqdm import tqdm

from nasnet_det.utils.errors import BadInputError, require_int
from search.base_config import NOT_IDENTITY as NETWORK_NOT_IDENTITY
from search.base_config import require
from search.estimators import ESTIMATORS, Estimator, build_estimator
from search.journal import Evaluation
from search.outputs import write_json_atomic
from search.reward import ChildData, load_search_data
from search.strategies.base import STRATEGIES, Strategy, resolve_strategies

log = logging.getLogger(__name__)
SCORES_NAME = "zero_cost_scores.json"
SAVE_EVERY = 10  # candidates scored between writes of the scores file


def proxy_identity(cfg: CfgNode) -> dict[str, Any]:
    """The proxy's :meth:`~search.estimators.base.Estimator.identity` outside ``SEARCH.ZERO_COST`` (which the
    strategy's identity holds whole), as JSON types."""
    settings = ESTIMATORS.lookup(cfg.SEARCH.ZERO_COST.PROXY, key="SEARCH.ZERO_COST.PROXY").identity(cfg)
    return json.loads(json.dumps({k: v for k, v in settings.items() if k.split(".")[:2] != ["SEARCH", "ZERO_COST"]}))


@STRATEGIES.register()
class ZeroCost(Strategy):
    name = "zero_cost"
    config_node = "SEARCH.ZERO_COST"
    owned_files = (SCORES_NAME,)  # the proxy's scores

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        # SEARCH.STRATEGY zero_cost (search/strategies/zero_cost.py): CANDIDATES random cells are scored by PROXY
        # (an estimator of search/estimators, at initialisation) and the SEARCH.BUDGET best are trained as children.
        z = cfg.SEARCH.ZERO_COST = CfgNode()
        z.PROXY = "synflow"
        z.CANDIDATES = 200
        z.BATCH_SIZE = 64  # training images of the data-dependent proxies' minibatch

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        z = cfg.SEARCH.ZERO_COST
        for key in ("CANDIDATES", "BATCH_SIZE"):
            require_int(z[key], f"SEARCH.ZERO_COST.{key}", 1)
        if cls.name in resolve_strategies(cfg.SEARCH.STRATEGY):  # (other searches leave the node at its defaults)
            require(z.CANDIDATES >= cfg.SEARCH.BUDGET, "SEARCH.ZERO_COST.CANDIDATES", z.CANDIDATES,
                    f"at least SEARCH.BUDGET ({cfg.SEARCH.BUDGET}), the children trained from the best-ranked "
                    "candidates")

    @classmethod
    def identity(cls, cfg: CfgNode) -> dict[str, Any]:
        """Its node and the settings its proxy's scores depend on (a supernet proxy's ``ONESHOT``), so a rerun
        with other values is refused instead of reusing the scores of the old ones."""
        return {**proxy_identity(cfg), **super().identity(cfg)}

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        self.cfg, z = cfg, cfg.SEARCH.ZERO_COST
        self.estimator: Estimator = build_estimator(z.PROXY, cfg, key="SEARCH.ZERO_COST.PROXY")
        self.output_dir: Path | None = None
        self.position = 0  # ranked candidates handed out so far
        self.ranked: list[list[int]] | None = None

    def attach(self, output_dir: Path, rows: list[Evaluation]) -> None:
        self.output_dir, self.position = output_dir, len(rows)

    def candidates(self) -> list[list[int]]:
        """The distinct uniformly drawn cells (their decisions), in drawing order."""
        gen = torch.Generator().manual_seed(int(self.cfg.SEARCH.SEED) * 7_919 + 19)
        drawn = self.space.sample(int(self.cfg.SEARCH.ZERO_COST.CANDIDATES), gen).tolist()
        return [list(d) for d in dict.fromkeys(tuple(d) for d in drawn)]

    def scores(self, candidates: list[list[int]]) -> list[float]:
        """The proxy's score of every candidate, continuing the scores file of an interrupted run."""
        path = self.output_dir / SCORES_NAME if self.output_dir is not None else None
        # everything a score depends on: another proxy minibatch, network or image size is another score
        header = {"proxy": self.estimator.name, "seed": int(self.cfg.SEARCH.SEED),
                  "zero_cost": {k: v for k, v in self.cfg.SEARCH.ZERO_COST.items()},
                  "network": {k: v for k, v in self.cfg.MODEL.NASNET.items() if k not in NETWORK_NOT_IDENTITY},
                  "image_size": int(self.cfg.CHILD.IMAGE_SIZE)}
        if proxy_identity(self.cfg):  # (absent for a proxy without settings beyond those: older files still match)
            header["estimator"] = proxy_identity(self.cfg)
        done: list[float] = []
        if path is not None and path.is_file():
            saved: dict[str, Any] = json.loads(path.read_text())
            if {k: saved.get(k) for k in header} == header and saved["candidates"] == candidates[:len(saved["scores"])]:
                done = [float(s) for s in saved["scores"]]
            else:
                log.warning("%s was written for other settings; scoring the candidates again", path)
        if len(done) < len(candidates):
            self.estimator.prepare(self._data() if self.estimator.needs_data else None, int(self.cfg.SEARCH.SEED))
        bar = tqdm(total=len(candidates), initial=len(done), desc=f"zero_cost[{self.estimator.name}]",
                   dynamic_ncols=True, disable=len(done) == len(candidates))
        try:
            for i in range(len(done), len(candidates)):
                done.append(float(self.estimator.score(self.space.genotype(candidates[i]))))
                bar.update(1)
                if path is not None and (len(done) % SAVE_EVERY == 0 or len(done) == len(candidates)):
                    write_json_atomic(path, {**header, "candidates": candidates[:len(done)], "scores": done})
        finally:
            bar.close()
        return done

    def _data(self) -> ChildData:
        return load_search_data(self.cfg)

    def ranking(self) -> list[list[int]]:
        """The candidates, best proxy score first (ties: drawing order)."""
        if self.ranked is None:
            cands = self.candidates()
            scores = self.scores(cands)
            order = sorted(range(len(cands)), key=lambda i: (-scores[i], i))
            self.ranked = [cands[i] for i in order]
        return self.ranked

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        ranked = self.ranking()
        if self.position + n > len(ranked):  # fewer distinct candidates than the budget (a tiny space)
            raise BadInputError(f"SEARCH.ZERO_COST.CANDIDATES={self.cfg.SEARCH.ZERO_COST.CANDIDATES} drew only "
                                f"{len(ranked)} distinct cells, fewer than SEARCH.BUDGET; raise it")
        out = ranked[self.position:self.position + n]
        self.position += n
        return torch.tensor(out, dtype=torch.long), None
