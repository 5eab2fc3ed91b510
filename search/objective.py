"""The search objective (``SEARCH.OBJECTIVE``): where a child's accuracy becomes its reward.

``accuracy`` keeps the accuracy. ``latency`` is MnasNet's reward ACC x (LAT / T)^w, LAT the cost of the cell's
detection backbone from a ``SEARCH.LATENCY.ESTIMATOR`` (nasnet_det/latency.py) and T its target; the soft
constraint uses w = ``SEARCH.LATENCY.WEIGHT`` (-0.07) everywhere, the hard one w = 0 within T and -1 beyond.

It applies wherever a reward is made, so every strategy gets it: :class:`ObjectiveEvaluator` wraps the
evaluator the workers run (ppo, reinforce, random and any strategy whose children the workers evaluate), and
the one-shot search calls :meth:`Objective.apply` on each supernet score. Either way each child also records
its backbone's latency (ms), params and mult-adds (and its accuracy beside the reward).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fvcore.common.config import CfgNode

from nasnet_det.genotypes import get_genotype
from nasnet_det.latency import CostProfile, LatencyEstimator, LatencySetting, LookupTableLatency, make_estimator
from nasnet_det.space import Genotype
from search.workers import DevicePlaced, Evaluator


def latency_setting(cfg: CfgNode) -> LatencySetting:
    lat = cfg.SEARCH.LATENCY
    return LatencySetting(device=str(lat.DEVICE), input_size=int(lat.INPUT_SIZE), num_cells=int(lat.NUM_CELLS),
                          filters=int(lat.FILTERS), backbone=str(lat.BACKBONE), warmup=int(lat.WARMUP),
                          repeats=int(lat.REPEATS), threads=int(lat.THREADS), cache_dir=str(lat.CACHE_DIR))


def mnasnet_reward(accuracy: float, cost: float, target: float, weight: float = -0.07,
                   constraint: str = "soft") -> float:
    """ACC x (cost / target)^w: soft (w = ``weight``) or hard (w = 0 when cost <= target, else -1)."""
    if constraint == "hard":
        w = 0.0 if cost <= target else -1.0
    elif constraint == "soft":
        w = weight
    else:
        raise ValueError(f"SEARCH.LATENCY.CONSTRAINT={constraint!r}: expected 'soft' or 'hard'")
    return float(accuracy) * (float(cost) / float(target)) ** w


class Objective:
    """The reward of ``cfg``'s objective, and each cell's cost profile (cached per genotype: a cell sampled
    again is not timed again). ``enabled`` is False when nothing is profiled (accuracy objective without
    ``SEARCH.LATENCY.RECORD``): :meth:`apply` then passes results through."""

    def __init__(self, cfg: CfgNode):
        lat = cfg.SEARCH.LATENCY
        self.kind = str(cfg.SEARCH.OBJECTIVE)
        self.enabled = self.kind == "latency" or bool(lat.RECORD)
        self.estimator: LatencyEstimator = make_estimator(str(lat.ESTIMATOR), latency_setting(cfg))
        self.target = float(lat.TARGET_MULT_ADDS_M if lat.ESTIMATOR == "flops" else lat.TARGET_MS)
        self.weight, self.constraint = float(lat.WEIGHT), str(lat.CONSTRAINT)
        self._profiles: dict[str, CostProfile] = {}

    def prepare(self, progress: bool = False) -> None:
        """Build what the estimator needs once (the lut table), before children are scored: in the driver,
        so that the workers receive a filled table instead of each building one."""
        if self.enabled and isinstance(self.estimator, LookupTableLatency):
            self.estimator.build(progress)

    def place_on(self, device: str) -> None:
        """Time cells on ``device``, the search worker's (a CUDA latency setting times on the worker's GPU)."""
        self.estimator.place_on(device)

    def profile(self, genotype: Genotype | str) -> CostProfile:
        genotype = get_genotype(genotype) if isinstance(genotype, str) else genotype
        key = json.dumps(genotype.to_dict()["normal"]) + json.dumps(genotype.to_dict()["reduce"])
        if key not in self._profiles:
            self._profiles[key] = self.estimator.profile(genotype)
        return self._profiles[key]

    def reward(self, accuracy: float, profile: CostProfile) -> float:
        if self.kind == "accuracy":
            return float(accuracy)
        return mnasnet_reward(accuracy, self.estimator.cost(profile), self.target, self.weight, self.constraint)

    def apply(self, result: Mapping[str, Any], genotype: Genotype) -> dict[str, Any]:
        """``result`` (an evaluator's: ``reward`` is the accuracy) with the objective's reward and the costs."""
        out = dict(result)
        if not self.enabled:
            return out
        p = self.profile(genotype)
        out.update(accuracy=float(result["reward"]), reward=self.reward(result["reward"], p),
                   latency_ms=p.latency_ms, mult_adds=p.mult_adds, backbone_params=p.params)
        return out


class ObjectiveEvaluator:
    """Picklable: runs ``evaluator`` (in the worker) and turns its accuracy into the objective's reward, with
    the cell's backbone timed there too. It forwards the worker's device (:class:`search.workers.DevicePlaced`)
    to the evaluator it wraps and to the estimator, so both train and time on the worker's GPU."""

    def __init__(self, evaluator: Evaluator, objective: Objective):
        self.evaluator, self.objective = evaluator, objective

    def place_on(self, device: str) -> None:
        if isinstance(self.evaluator, DevicePlaced):
            self.evaluator.place_on(device)
        self.objective.place_on(device)

    def __call__(self, genotype: Genotype, seed: int) -> dict[str, Any]:
        return self.objective.apply(self.evaluator(genotype, seed), genotype)


def with_objective(evaluator: Evaluator, cfg: CfgNode, progress: bool = False) -> Evaluator:
    """``evaluator`` under ``cfg``'s objective (itself when nothing is profiled)."""
    objective = Objective(cfg)
    if not objective.enabled:
        return evaluator
    objective.prepare(progress)
    return ObjectiveEvaluator(evaluator, objective)
