"""Supernet estimators: a cell's accuracy on the held-out split with the shared weights of a supernet
(:mod:`search.supernet`) trained once in ``prepare`` by the supernet trainer (:mod:`search.supernet_trainer`), by
``ONESHOT.*`` (LR schedule, batch, momentum,
weight decay, clipping; ``ONESHOT.EPOCHS`` x ``ONESHOT.WEIGHT_STEPS`` updates) on the images of ``CHILD``.

* ``supernet`` (:mod:`search.oneshot_supernet`, registered from above the search engine it runs): today's one-shot
  search (``SEARCH.STRATEGY oneshot``, controller-sampled paths) run by the search engine in a temporary folder; its
  supernet scores the cells (not those that concatenate a cell input, such as NASNet-A: its paths never do).
* ``spos``: single-path uniform training (SPOS): one uniformly drawn path per update. The paths of spos,
  fairnas and fewshot add each cell input to their concat lists half of the time, so these supernets also
  score cells whose output concatenates an input (NASNet-A).
* ``fairnas``: strict fairness (FairNAS): each update accumulates the gradients of 13 paths in which every
  op slot takes each of the 13 ops exactly once (inputs and combines drawn uniformly), then steps once.
* ``fewshot``: ``ONESHOT.FEW_SHOT_SPLITS`` sub-supernets split on the first op decision (op_1 of the normal
  cell's block 0; op ``i`` goes to split ``i % K``): a shared uniform half of the updates, then each split
  copies it and trains its own subspace for the other half / K updates; a cell is scored by its split's.
* ``*_bn`` (``supernet_bn``, ``spos_bn``, ``fairnas_bn``, ``fewshot_bn``): the same, with BatchNorm
  statistics recomputed for each cell on ``ONESHOT.BN_RECALIBRATION_BATCHES`` training minibatches (8
  when that is 0) before it is scored in eval mode; the others score with the batch's statistics (ENAS).
"""

from __future__ import annotations

from typing import Any, ClassVar

from fvcore.common.config import CfgNode

from nasnet_det.engine.devices import resolve_device
from nasnet_det.space import Genotype
from search.base_config import plain_dict
from search.estimators.base import ESTIMATORS, Estimator
from search.reward import ChildData
from search.supernet import SuperNet
from search.supernet_trainer import SupernetTrainer, few_shot_split

DEFAULT_RECALIBRATION_BATCHES = 8
# ONESHOT keys that change no score: where it runs (float rounding aside) and how often the one-shot search saves
RESULT_NEUTRAL = ("DEVICE", "CHECKPOINT_EVERY")


class SupernetEstimator(Estimator):
    needs_data = True
    #: how the paths of one update are drawn: "uniform" (one path) or "fair" (13 paths, each op once)
    sampling: ClassVar[str] = "uniform"
    few_shot: ClassVar[bool] = False
    recalibrate: ClassVar[bool] = False
    #: input states may be loose ends (NASNet-A's normal cell concatenates one): trained on paths that add
    #: each input to the concat list half of the time (:func:`search.supernet.with_loose_inputs`)
    loose_inputs: ClassVar[bool] = True

    @classmethod
    def identity(cls, cfg: CfgNode) -> dict[str, Any]:
        """``ONESHOT`` (the supernets' training), without the keys this estimator does not read."""
        unread = (*RESULT_NEUTRAL, *(() if cls.few_shot else ("FEW_SHOT_SPLITS",)),
                  *(() if cls.recalibrate else ("BN_RECALIBRATION_BATCHES",)))
        return {"ONESHOT": {k: v for k, v in plain_dict(cfg.ONESHOT).items() if k not in unread}}

    def prepare(self, data: ChildData | None, seed: int) -> None:
        super().prepare(data, seed)
        o = self.cfg.ONESHOT
        device = resolve_device(str(o.DEVICE), "ONESHOT.DEVICE", announce=False)  # CUDA asked for and absent: one line
        recalibration = (int(o.BN_RECALIBRATION_BATCHES) or DEFAULT_RECALIBRATION_BATCHES) if self.recalibrate else 0
        self.trainer = SupernetTrainer(self.cfg, data, device, self.seed, recalibration=recalibration,
                                       loose_inputs=self.loose_inputs)
        self.splits = int(o.FEW_SHOT_SPLITS) if self.few_shot else 1
        self.nets = self.train_supernets()

    def train_supernets(self) -> list[SuperNet]:
        return self.trainer.train_supernets(self.sampling == "fair", self.splits, desc=f"estimator[{self.name}]")

    def supernet_for(self, genotype: Genotype) -> SuperNet:
        return self.nets[few_shot_split(self.trainer.space.decisions(genotype), self.splits) if self.few_shot else 0]

    def score(self, genotype: Genotype) -> float:
        net = self.supernet_for(genotype)
        net.check_genotype(genotype)
        return self.trainer.score(net, genotype)


@ESTIMATORS.register()
class SPOS(SupernetEstimator):
    name = "spos"


@ESTIMATORS.register()
class SPOSRecalibrated(SupernetEstimator):
    name, recalibrate = "spos_bn", True


@ESTIMATORS.register()
class FairNAS(SupernetEstimator):
    name, sampling = "fairnas", "fair"


@ESTIMATORS.register()
class FairNASRecalibrated(SupernetEstimator):
    name, sampling, recalibrate = "fairnas_bn", "fair", True


@ESTIMATORS.register()
class FewShot(SupernetEstimator):
    name, few_shot = "fewshot", True


@ESTIMATORS.register()
class FewShotRecalibrated(SupernetEstimator):
    name, few_shot, recalibrate = "fewshot_bn", True, True
