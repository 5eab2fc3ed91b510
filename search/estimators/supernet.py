"""Supernet estimators: a cell's accuracy on the held-out split with the shared weights of a supernet
(:mod:`search.supernet`) trained once in ``prepare``, by ``ONESHOT.*`` (LR schedule, batch, momentum,
weight decay, clipping; ``ONESHOT.EPOCHS`` x ``ONESHOT.WEIGHT_STEPS`` updates) on the images of ``CHILD``.

* ``supernet``: today's one-shot search (:class:`search.oneshot.OneShotSearch`, controller-sampled paths)
  run in a temporary folder; its supernet scores the cells (not those that concatenate a cell input, such as
  NASNet-A: its paths never do).
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

import copy
import math
import tempfile
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import OPS, Genotype
from search.estimators.base import Estimator, register_estimator
from search.reward import ChildData, _augment, _to_tensor
from search.supernet import SuperNet, fair_paths, recalibrate_bn, with_loose_inputs

DEFAULT_RECALIBRATION_BATCHES = 8
FEW_SHOT_DECISION = 2  # the split decision: op_1 of the normal cell's block 0 (decisions: in, in, op, op, combine)


def few_shot_split(decisions: list[int], splits: int) -> int:
    """The sub-supernet that owns a cell: its first op decision modulo ``splits``."""
    return int(decisions[FEW_SHOT_DECISION]) % splits


class SupernetEstimator(Estimator):
    needs_data = True
    #: how the paths of one update are drawn: "uniform" (one path) or "fair" (13 paths, each op once)
    sampling: ClassVar[str] = "uniform"
    few_shot: ClassVar[bool] = False
    recalibrate: ClassVar[bool] = False
    #: input states may be loose ends (NASNet-A's normal cell concatenates one): trained on paths that add
    #: each input to the concat list half of the time (:func:`search.supernet.with_loose_inputs`)
    loose_inputs: ClassVar[bool] = True

    def prepare(self, data: ChildData | None, seed: int) -> None:
        super().prepare(data, seed)
        cfg, o = self.cfg, self.cfg.ONESHOT
        self.device = torch.device("cuda" if str(o.DEVICE) == "auto" and torch.cuda.is_available() else
                                   ("cpu" if str(o.DEVICE) == "auto" else str(o.DEVICE)))
        size = int(cfg.CHILD.IMAGE_SIZE)
        self.x_train = _to_tensor(data.x_train, size, self.device)
        self.y_train = torch.from_numpy(data.y_train).to(self.device)
        self.x_val = _to_tensor(data.x_val, size, self.device)
        self.y_val = torch.from_numpy(data.y_val).to(self.device)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.splits = int(o.FEW_SHOT_SPLITS) if self.few_shot else 1
        #: paths trained per (op decision, op): FairNAS makes every row equal
        self.op_counts = np.zeros((len(self.space.op_columns), len(OPS)), int)
        self.nets = self.train_supernets()

    @property
    def num_blocks(self) -> int:
        return int(self.cfg.SEARCH.NUM_BLOCKS)

    @cached_property
    def space(self) -> SearchSpace:
        return SearchSpace(self.num_blocks)

    def new_supernet(self) -> SuperNet:
        net = self.cfg.MODEL.NASNET
        torch.manual_seed(self.seed)
        return SuperNet(self.num_blocks, int(net.NUM_CELLS), int(net.FILTERS), num_classes=10,
                        bn_eps=float(net.BN_EPS), pad_mode=str(net.PAD_MODE),
                        channels_last=bool(net.get("CHANNELS_LAST", True)),
                        track_running_stats=self.recalibrate, loose_inputs=self.loose_inputs).to(self.device)

    def total_updates(self) -> int:
        o = self.cfg.ONESHOT
        return int(o.EPOCHS) * (int(o.WEIGHT_STEPS) or max(1, len(self.x_train) // int(o.BATCH_SIZE)))

    def draw_paths(self, split: int | None) -> torch.Tensor:
        """The paths of one update; ``split``: restrict the split decision to that few-shot split's ops."""
        paths = (fair_paths(self.num_blocks, self.gen) if self.sampling == "fair"
                 else self.space.sample(1, self.gen))
        if split is not None:  # an op of the split, uniformly
            ops = [i for i in range(len(OPS)) if i % self.splits == split]
            pick = torch.randint(0, len(ops), (len(paths),), generator=self.gen)
            paths[:, FEW_SHOT_DECISION] = torch.tensor(ops)[pick]
        op_cols = self.space.op_columns
        for row in paths[:, op_cols].tolist():
            self.op_counts[np.arange(len(op_cols)), row] += 1
        return paths

    def train(self, supernet: SuperNet, first: int, updates: int, split: int | None, bar: tqdm,
              stride: float = 1.0) -> None:
        """``updates`` SGD updates at positions ``first, first + stride, ...`` of the cosine schedule over
        :meth:`total_updates`."""
        o = self.cfg.ONESHOT
        opt = torch.optim.SGD(supernet.parameters(), lr=o.LR, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY,
                              nesterov=o.MOMENTUM > 0)
        total = self.total_updates()
        supernet.train()
        for i in range(updates):
            step = first + i * stride
            for group in opt.param_groups:
                group["lr"] = o.LR_MIN + 0.5 * (o.LR - o.LR_MIN) * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            paths = self.draw_paths(split)
            for path in paths.tolist():
                idx = torch.randperm(len(self.x_train), generator=self.gen)[:o.BATCH_SIZE].to(self.device)
                xb = _augment(self.x_train[idx], self.gen) if self.cfg.CHILD.AUGMENT else self.x_train[idx]
                genotype = self.space.genotype(path)
                if self.loose_inputs:
                    genotype = with_loose_inputs(genotype, self.gen)
                loss = F.cross_entropy(supernet(xb, genotype), self.y_train[idx]) / len(paths)
                if not torch.isfinite(loss):
                    raise ValueError(f"estimator {self.name!r}: the supernet's loss became {float(loss)} at "
                                     f"update {step}; lower ONESHOT.LR (now {o.LR})")
                loss.backward()
            if o.GRAD_CLIP > 0:
                torch.nn.utils.clip_grad_norm_(supernet.parameters(), o.GRAD_CLIP)
            opt.step()
            bar.update(1)

    def train_supernets(self) -> list[SuperNet]:
        total = self.total_updates()
        with tqdm(total=total, desc=f"estimator[{self.name}]", dynamic_ncols=True, leave=False) as bar:
            shared = self.new_supernet()
            if not self.few_shot:
                self.train(shared, 0, total, None, bar)
                return [shared]
            warm = total // 2
            self.train(shared, 0, warm, None, bar)
            nets = []
            per_split = (total - warm) // self.splits
            for k in range(self.splits):  # each split inherits the shared weights (few-shot NAS)
                net = copy.deepcopy(shared)
                # every split runs the same rest of the schedule (warm -> total in its own updates), so their
                # scores stay comparable: one schedule cut in consecutive pieces would train split 0 at high
                # learning rates and the last near LR_MIN
                self.train(net, warm, per_split, k, bar, stride=(total - warm) / max(per_split, 1))
                nets.append(net)
            return nets

    def supernet_for(self, genotype: Genotype) -> SuperNet:
        return self.nets[few_shot_split(self.space.decisions(genotype), self.splits) if self.few_shot else 0]

    def recalibration_batches(self) -> list[torch.Tensor]:
        """The same training minibatches for every cell (drawn from the seed), so scores stay comparable."""
        o = self.cfg.ONESHOT
        n = int(o.BN_RECALIBRATION_BATCHES) or DEFAULT_RECALIBRATION_BATCHES
        gen = torch.Generator().manual_seed(self.seed + 1)
        return [self.x_train[torch.randperm(len(self.x_train), generator=gen)[:o.BATCH_SIZE].to(self.device)]
                for _ in range(n)]

    @torch.no_grad()
    def score(self, genotype: Genotype) -> float:
        net = self.supernet_for(genotype)
        net.check_genotype(genotype)
        if self.recalibrate:
            recalibrate_bn(net, genotype, self.recalibration_batches())
        net.eval()  # batch statistics without recalibration (track_running_stats=False), else the new ones
        return supernet_accuracy(net, genotype, self.x_val, self.y_val, int(self.cfg.CHILD.EVAL_BATCH_SIZE))


@torch.no_grad()
def supernet_accuracy(net: SuperNet, genotype: Genotype, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(x[i:i + batch_size], genotype).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


class OneShotSupernet(SupernetEstimator):
    """Today's one-shot search (controller-sampled paths, ONESHOT.POLICY), its supernet as the estimator. Its
    paths' loose ends are block states only, so it cannot score a cell that concatenates a cell input."""

    loose_inputs = False

    def train_supernets(self) -> list[SuperNet]:
        from search.oneshot import OneShotSearch  # (search.oneshot imports the strategy registry, which imports us)

        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.SEARCH.STRATEGY, cfg.SEARCH.SEED = "oneshot", self.seed
        cfg.ONESHOT.BN_RECALIBRATION_BATCHES = 0
        with tempfile.TemporaryDirectory(prefix="supernet_estimator_") as out:
            search = OneShotSearch(cfg, out, progress=False, fresh=True, data=self.data)
            search.run()
            trained = search.supernet.state_dict()
        net = self.new_supernet()
        # the search's supernet keeps no running statistics; a recalibrating one gets fresh buffers
        net.load_state_dict(trained, strict=not self.recalibrate)
        return [net]


for _name, _base, _attrs in (("supernet", OneShotSupernet, {}), ("spos", SupernetEstimator, {}),
                             ("fairnas", SupernetEstimator, {"sampling": "fair"}),
                             ("fewshot", SupernetEstimator, {"few_shot": True})):
    for _suffix, _recal in (("", False), ("_bn", True)):
        register_estimator(_name + _suffix)(type(f"Estimator_{_name}{_suffix}", (_base,),
                                                 {**_attrs, "recalibrate": _recal, "__module__": __name__}))
