"""ZiCo (Li et al., "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR 2023;
reference: SLDGroup/ZiCo ``ZeroShotProxy/compute_zico.py``): networks whose gradients are large and agree
across minibatches train faster and generalise better.

For every convolution and linear weight tensor (layer) l, over B >= 2 labelled minibatches: the per-element
mean |g| / std(g) of the cross-entropy gradient g across the batches (population std), summed over the layer's
elements whose std is not zero; ZiCo = sum over layers of the log of that sum, a layer whose sum is 0 left out
(as the reference does). Gradients are each minibatch's own (the paper's definition; the reference file at
commit bbabe28 never zeroes them between minibatches, so its later "gradients" are running sums; several later copies
of it in other repositories zero them each minibatch). The network is in train mode
(BatchNorm uses the batch's statistics), as in the reference.

Settings: ``ESTIMATORS.ZICO.BATCHES`` minibatches of ``SEARCH.ZERO_COST.BATCH_SIZE`` distinct training images
drawn by the seed (2: the default ``--maxbatch`` of AZ-NAS's search script, which is modified from ZiCo's)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from nasnet_det.space import Genotype
from nasnet_det.utils.errors import require_int
from search.estimators.base import ESTIMATORS
from search.estimators.rank import estimator_node
from search.estimators.zero_cost import ProxyEstimator, proxy_minibatch


def zico(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """ZiCo of ``model`` over the labelled minibatches ``batches`` (at least two; see the module's docstring).
    The gradients are left cleared."""
    if len(batches) < 2:
        raise ValueError(f"zico: needs at least 2 minibatches, got {len(batches)}")
    layers = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads: list[list[torch.Tensor]] = [[] for _ in layers]
    model.train()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for i, w in enumerate(layers):
            grads[i].append(torch.zeros_like(w) if w.grad is None else w.grad.detach().double().flatten())
    model.zero_grad(set_to_none=True)
    total = 0.0
    for per_batch in grads:
        g = torch.stack([t.flatten() for t in per_batch])  # batches x elements
        std = g.std(0, unbiased=False)
        keep = std != 0
        layer_sum = float((g.abs().mean(0)[keep] / std[keep]).sum())
        if layer_sum != 0:
            total += math.log(layer_sum)
    return total


@ESTIMATORS.register()
class ZiCo(ProxyEstimator):
    name = "zico"
    config_node = "ESTIMATORS.ZICO"

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        # the zico estimator (search/estimators/zico.py): BATCHES minibatches of SEARCH.ZERO_COST.BATCH_SIZE
        # training images, drawn by the seed, whose gradients' mean / std it measures (2, as ZiCo's search)
        z = estimator_node(cfg, "ZICO")
        z.BATCHES = 2

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        require_int(cfg.ESTIMATORS.ZICO.BATCHES, "ESTIMATORS.ZICO.BATCHES", 2)

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``BATCHES`` disjoint minibatches of distinct training images drawn by the seed."""
        assert self.data is not None, "prepare() first"
        n, size = int(self.cfg.ESTIMATORS.ZICO.BATCHES), int(self.cfg.SEARCH.ZERO_COST.BATCH_SIZE)
        x, y = proxy_minibatch(self.data, n * size, int(self.cfg.CHILD.IMAGE_SIZE), self.seed)
        per = len(x) // n
        if per < 1:
            raise ValueError(f"ESTIMATORS.ZICO.BATCHES={n}: more minibatches than the {len(x)} training images")
        return [(x[i * per:(i + 1) * per], y[i * per:(i + 1) * per]) for i in range(n)]

    def score(self, genotype: Genotype) -> float:
        return zico(self.child(genotype), self.batches())
