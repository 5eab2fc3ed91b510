"""The one supernet trainer: SGD (Nesterov) on paths of a :class:`~search.supernet.SuperNet` under one cosine
schedule, and the scoring of a cell with the shared weights. The one-shot search (:mod:`search.strategies.oneshot`,
controller-sampled paths) and the supernet estimators (:mod:`search.estimators.supernet`) both train with it.

Its options are the known fixes of weight-sharing rankings:

* single path (SPOS): one uniformly drawn path per update (``draw_paths(fair=False)``);
* fairness (FairNAS): 13 paths per update in which every op slot takes each op once (``fair=True``);
* few-shot splits: ``train_supernets(splits=K)`` trains a shared supernet for half of the updates, then one copy
  per split on the subspace whose first op decision is ``i % K`` (:func:`few_shot_split`);
* BatchNorm recalibration: ``recalibration`` > 0 keeps running statistics and recomputes them for each cell
  on that many training minibatches before scoring it (:func:`search.supernet.recalibrate_bn`);
* loose inputs: the paths add each cell input to their concat lists half of the time
  (:func:`search.supernet.with_loose_inputs`), so that cells concatenating an input can be scored.

Every random choice (paths, minibatches, augmentation) comes from one generator seeded with ``seed``; the
recalibration minibatches from another (``seed + 1``), the same for every cell.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from tqdm import tqdm

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import OPS, Genotype
from search.reward import ChildData, augment_batch, cosine_factor, images_to_tensor
from search.supernet import SuperNet, fair_paths, recalibrate_bn, with_loose_inputs

FEW_SHOT_DECISION = 2  # the split decision: op_1 of the normal cell's block 0 (decisions: in, in, op, op, combine)


def few_shot_split(decisions: list[int], splits: int) -> int:
    """The sub-supernet that owns a cell: its first op decision modulo ``splits``."""
    return int(decisions[FEW_SHOT_DECISION]) % splits


class SupernetTrainer:
    """Trains supernets of ``cfg``'s children (``MODEL.NASNET``, B = ``SEARCH.NUM_BLOCKS``, ``CHILD`` images and
    augmentation) on ``data`` by ``cfg.ONESHOT`` (batch, LR -> LR_MIN cosine over ``EPOCHS`` x ``WEIGHT_STEPS``
    updates, momentum, weight decay, clipping). ``rank`` / ``world``: under DDP each process trains on its
    share of every minibatch (all draw the same random numbers)."""

    def __init__(self, cfg: CfgNode, data: ChildData, device: torch.device, seed: int, *, recalibration: int = 0,
                 loose_inputs: bool = False, rank: int = 0, world: int = 1):
        self.cfg, self.device, self.seed = cfg, device, int(seed)
        self.recalibration, self.loose_inputs = int(recalibration), loose_inputs
        self.rank, self.world = rank, world
        size = int(cfg.CHILD.IMAGE_SIZE)
        self.x_train = images_to_tensor(data.x_train, size, device)
        self.y_train = torch.from_numpy(data.y_train).to(device)
        self.x_val = images_to_tensor(data.x_val, size, device)
        self.y_val = torch.from_numpy(data.y_val).to(device)
        o = cfg.ONESHOT
        self.steps_per_epoch = int(o.WEIGHT_STEPS) or max(1, len(self.x_train) // int(o.BATCH_SIZE))
        self.total_updates = int(o.EPOCHS) * self.steps_per_epoch
        self.gen = torch.Generator().manual_seed(self.seed)  # every random choice of the training
        self.space = SearchSpace(self.num_blocks)
        #: paths trained per (op decision, op): FairNAS makes every row equal
        self.op_counts = np.zeros((len(self.space.op_columns), len(OPS)), int)

    @property
    def num_blocks(self) -> int:
        return int(self.cfg.SEARCH.NUM_BLOCKS)

    # ---- building ----------------------------------------------------------------------------------------
    def new_supernet(self) -> SuperNet:
        """The supernet of the children's network, its initial weights drawn from torch's generator seeded
        with the seed (running statistics kept when it recalibrates)."""
        net = self.cfg.MODEL.NASNET
        torch.manual_seed(self.seed)
        return SuperNet(self.num_blocks, int(net.NUM_CELLS), int(net.FILTERS), num_classes=10,
                        bn_eps=float(net.BN_EPS), pad_mode=str(net.PAD_MODE),
                        channels_last=bool(net.get("CHANNELS_LAST", True)),
                        track_running_stats=self.recalibration > 0, loose_inputs=self.loose_inputs).to(self.device)

    def optimizer(self, net: SuperNet) -> torch.optim.SGD:
        o = self.cfg.ONESHOT
        return torch.optim.SGD(net.parameters(), lr=o.LR, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY,
                               nesterov=o.MOMENTUM > 0)

    def learning_rate(self, position: float) -> float:
        """The LR at update ``position`` (may be fractional) of the cosine schedule over ``total_updates``."""
        o = self.cfg.ONESHOT
        return o.LR_MIN + (o.LR - o.LR_MIN) * cosine_factor(position, self.total_updates)

    # ---- training ----------------------------------------------------------------------------------------
    def draw_paths(self, fair: bool, split: int | None = None, splits: int = 1) -> torch.Tensor:
        """The decisions of one update's paths: one uniform path, or FairNAS's 13; ``split``: the split
        decision restricted to the ops of that few-shot split (of ``splits``)."""
        paths = fair_paths(self.num_blocks, self.gen) if fair else self.space.sample(1, self.gen)
        if split is not None:  # an op of the split, uniformly
            ops = [i for i in range(len(OPS)) if i % splits == split]
            pick = torch.randint(0, len(ops), (len(paths),), generator=self.gen)
            paths[:, FEW_SHOT_DECISION] = torch.tensor(ops)[pick]
        op_cols = self.space.op_columns
        for row in paths[:, op_cols].tolist():
            self.op_counts[np.arange(len(op_cols)), row] += 1
        return paths

    def update(self, net: SuperNet, optimizer: torch.optim.Optimizer, genotypes: list[Genotype], position: float,
               model: torch.nn.Module | None = None) -> float:
        """One SGD update at ``position`` of the schedule: the gradients of every path of ``genotypes`` (each on
        its own minibatch) averaged, then one step. ``model``: ``net`` wrapped for DDP. Returns the loss."""
        o = self.cfg.ONESHOT
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate(position)
        model = net if model is None else model
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        for genotype in genotypes:
            idx = torch.randperm(len(self.x_train), generator=self.gen)[:o.BATCH_SIZE].to(self.device)
            xb, yb = self.x_train[idx], self.y_train[idx]
            if self.cfg.CHILD.AUGMENT:  # the whole batch, so the generator stays in step across processes
                xb = augment_batch(xb, self.gen)
            if self.loose_inputs:
                genotype = with_loose_inputs(genotype, self.gen)
            if self.world > 1:  # this process's share of the batch
                xb, yb = xb[self.rank::self.world], yb[self.rank::self.world]
            loss = F.cross_entropy(model(xb, genotype), yb)
            if not torch.isfinite(loss):
                raise ValueError(f"the supernet's training loss became {float(loss.detach())} at update {position} "
                                 f"of {self.total_updates}; lower ONESHOT.LR (now {o.LR})")
            (loss / len(genotypes)).backward()
            total_loss += float(loss.detach()) / len(genotypes)
        if o.GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), o.GRAD_CLIP)
        optimizer.step()
        return total_loss

    def train(self, net: SuperNet, first: float, updates: int, fair: bool, bar: tqdm, split: int | None = None,
              splits: int = 1, stride: float = 1.0) -> None:
        """``updates`` updates on drawn paths (with a fresh optimizer) at positions ``first, first + stride,
        ...`` of the schedule."""
        opt = self.optimizer(net)
        for i in range(updates):
            paths = self.draw_paths(fair, split, splits)
            self.update(net, opt, [self.space.genotype(p) for p in paths.tolist()],
                        first + i * stride)
            bar.update(1)

    def train_supernets(self, fair: bool, splits: int = 1, desc: str = "supernet") -> list[SuperNet]:
        """Train on drawn paths for the whole schedule: one supernet, or with ``splits`` > 1 a shared one for
        half of it and a copy per few-shot split for the rest."""
        total = self.total_updates
        with tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False) as bar:
            shared = self.new_supernet()
            if splits <= 1:
                self.train(shared, 0, total, fair, bar)
                return [shared]
            warm = total // 2
            self.train(shared, 0, warm, fair, bar)
            nets = []
            per_split = (total - warm) // splits
            for k in range(splits):  # each split inherits the shared weights (few-shot NAS)
                net = copy.deepcopy(shared)
                # every split runs the same rest of the schedule (warm -> total in its own updates), so their
                # scores stay comparable: one schedule cut in consecutive pieces would train split 0 at high
                # learning rates and the last near LR_MIN
                self.train(net, warm, per_split, fair, bar, k, splits, stride=(total - warm) / max(per_split, 1))
                nets.append(net)
            return nets

    # ---- scoring -----------------------------------------------------------------------------------------
    def recalibration_batches(self) -> list[torch.Tensor]:
        """The same ``recalibration`` training minibatches for every cell (drawn from ``seed + 1``, apart from
        the training's generator, so scores stay comparable and a resumed search recalibrates alike)."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        batch = int(self.cfg.ONESHOT.BATCH_SIZE)
        return [self.x_train[torch.randperm(len(self.x_train), generator=gen)[:batch].to(self.device)]
                for _ in range(self.recalibration)]

    @torch.no_grad()
    def score(self, net: SuperNet, genotype: Genotype, x: torch.Tensor | None = None,
              y: torch.Tensor | None = None) -> float:
        """Accuracy of ``genotype`` with ``net``'s shared weights on ``x, y`` (default: the held-out split):
        with the batch's BatchNorm statistics (ENAS), or, when the trainer recalibrates, with running
        statistics recomputed for this cell first."""
        if self.recalibration > 0:
            recalibrate_bn(net, genotype, self.recalibration_batches())
        net.eval()  # batch statistics without recalibration (track_running_stats=False), else the new ones
        x, y = (self.x_val, self.y_val) if x is None else (x, y)
        return supernet_accuracy(net, genotype, x, y, int(self.cfg.CHILD.EVAL_BATCH_SIZE))


@torch.no_grad()
def supernet_accuracy(net: SuperNet, genotype: Genotype, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(x[i:i + batch_size], genotype).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)
