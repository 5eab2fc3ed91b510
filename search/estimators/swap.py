"""SWAP (Peng et al., "SWAP-NAS: Sample-Wise Activation Patterns for Ultra-fast NAS", ICLR 2024; reference:
pym1024/SWAP ``src/metrics/swap.py``): a network that gives more distinct activation patterns across the
neurons is more expressive.

The outputs of every ``nn.ReLU`` whose input is a 4-d feature map (the reference's forward hook), for
``ESTIMATORS.SWAP.IMAGES`` images (the reference: 16), concatenated per image (images x neurons); the score is
the number of distinct columns of their signs, i.e. of distinct per-neuron patterns across the images.
``swap_reg`` is the log of the reference's product of it and the size regulariser exp(-(params - MU)^2 /
SIGMA), params in thousands as the reference counts them (``count_parameters`` / 1e3): log(swap) - (params -
MU)^2 / SIGMA ranks cells as the product does, and does not underflow to 0 for every cell of a network far
from MU (the product does in a 2 @ f=32 network: ~3M parameters). The reference averages the score over
32 Gaussian re-initialisations of its DARTS proxy network; here ``ESTIMATORS.SWAP.REPEATS`` initialisations
drawn from the seed (every convolution is followed by BatchNorm with the batch's statistics, so the scale of
the initial weights barely matters to the signs).

Defaults of MU and SIGMA, chosen for the search's default child network (``MODEL.NASNET`` 1 @ f=8, 5-block
cells; measured on 200 uniformly drawn cells, seed 12345, 2026-12-07): the params of such cells range
71k-218k (median 143k, 90th percentile 183k, sd 31k); MU = 183 (thousands) favours the larger cells, as size
predicts accuracy in NASNet-like spaces, and SIGMA = 1900 (~ 2 sd^2) makes the factor a Gaussian of the
population's spread. A network of another size needs its own values."""

from __future__ import annotations

import math

import torch
from fvcore.common.config import CfgNode
from torch import nn

from nasnet_det.models.profile import count_params
from nasnet_det.space import Genotype
from nasnet_det.utils.errors import BadInputError, require, require_int
from search.estimators.base import ESTIMATORS
from search.estimators.rank import estimator_node
from search.estimators.zero_cost import ProxyEstimator, forward_hooked
from search.reward import ChildData, build_child


def swap(model: nn.Module, x: torch.Tensor) -> int:
    """The number of distinct per-neuron sign patterns of the post-ReLU activations of ``model`` over the
    images ``x`` (see the module's docstring); train mode, as a freshly built network is."""
    outputs: list[torch.Tensor] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if inputs[0].dim() == 4:
            outputs.append(output.detach().flatten(1))

    forward_hooked(model, x, [m for m in model.modules() if isinstance(m, nn.ReLU)], record)
    if not outputs:
        raise ValueError("swap: the network has no nn.ReLU on a 4-d feature map to read activation patterns from")
    patterns = torch.sign(torch.cat(outputs, 1)).T  # neurons x images
    return int(torch.unique(patterns, dim=0).shape[0])


def log_size_factor(params: int, mu: float, sigma: float) -> float:
    """The log of SWAP's regulariser exp(-(params / 1e3 - mu)^2 / sigma)."""
    return -((params / 1e3 - mu) ** 2) / sigma


@ESTIMATORS.register()
class Swap(ProxyEstimator):
    name = "swap"
    config_node = "ESTIMATORS.SWAP"
    regularised = False

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        # the swap and swap_reg estimators (search/estimators/swap.py): distinct activation patterns of IMAGES
        # training images (of the proxy minibatch), averaged over REPEATS initialisations; swap_reg multiplies
        # by exp(-(params / 1e3 - MU)^2 / SIGMA). MU, SIGMA suit the default 1 @ f=8 network (see the module).
        s = estimator_node(cfg, "SWAP")
        s.IMAGES = 16
        s.REPEATS = 1
        s.MU = 183.0  # thousands of params preferred (90th percentile of random cells at 1 @ f=8)
        s.SIGMA = 1900.0  # (thousands of params)^2: ~2 x the variance of random cells' params at 1 @ f=8

    @classmethod
    def check_config(cls, cfg: CfgNode) -> None:
        s = cfg.ESTIMATORS.SWAP
        require_int(s.IMAGES, "ESTIMATORS.SWAP.IMAGES", 2)
        require_int(s.REPEATS, "ESTIMATORS.SWAP.REPEATS", 1)
        for key, minimum in (("MU", None), ("SIGMA", 0.0)):
            v = s[key]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            require(ok and (minimum is None or v > minimum), f"ESTIMATORS.SWAP.{key}", v,
                    "a finite number" + ("" if minimum is None else " > 0"))

    def prepare(self, data: ChildData | None, seed: int) -> None:
        super().prepare(data, seed)
        images, batch = int(self.cfg.ESTIMATORS.SWAP.IMAGES), int(self.cfg.SEARCH.ZERO_COST.BATCH_SIZE)
        if images > batch:  # checked where swap is used: other searches may keep a smaller minibatch
            raise BadInputError(f"ESTIMATORS.SWAP.IMAGES={images}: expected at most SEARCH.ZERO_COST.BATCH_SIZE "
                                f"({batch}), the minibatch its images come from")

    def score(self, genotype: Genotype) -> float:
        s = self.cfg.ESTIMATORS.SWAP
        x = self.minibatch()[0][:int(s.IMAGES)]
        total = 0.0
        for r in range(int(s.REPEATS)):
            model = self.child(genotype) if r == 0 else self.reinitialised(genotype, r)
            total += swap(model, x)
        value = total / int(s.REPEATS)
        if self.regularised:
            return math.log(value) + log_size_factor(count_params(model), float(s.MU), float(s.SIGMA))
        return value

    def reinitialised(self, genotype: Genotype, repeat: int) -> nn.Module:
        """The child network with the initial weights of repeat ``repeat`` (repeat 0: :meth:`child`'s)."""
        torch.manual_seed(self.seed * 1_009 + repeat)
        return build_child(genotype, self.cfg.MODEL.NASNET)


@ESTIMATORS.register()
class SwapReg(Swap):
    name = "swap_reg"
    regularised = True
