"""Zero-cost proxies: a cell scored from one forward/backward pass of its child network at initialisation
(Abdelfattah et al., ICLR 2021; Mellor et al., NASWOT). Each proxy is a function of a module (and a
minibatch) so it can be checked by hand on a tiny network; the estimators apply it to the search's child
network (``MODEL.NASNET`` with the cell, initialised from the seed) on ``SEARCH.ZERO_COST.BATCH_SIZE``
training images at ``CHILD.IMAGE_SIZE``, drawn by the seed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from nasnet_det.space import Genotype
from search.estimators.base import ESTIMATORS
from search.estimators.size import ChildNetworkEstimator
from search.reward import ChildData, images_to_tensor


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """The convolution and linear weights (what the proxies' papers sum over; not BN's scale and shift)."""
    return [p for p in model.parameters() if p.dim() > 1]


def forward_hooked(model: nn.Module, x: torch.Tensor, modules: Iterable[nn.Module], hook: Callable[..., None],
                   pre: bool = False, grad: bool = False) -> torch.Tensor:
    """``model(x)`` in train mode with ``hook`` on each of ``modules`` (a forward hook, or a forward pre-hook
    when ``pre``), removed afterwards; without autograd unless ``grad``."""
    hooks = [m.register_forward_pre_hook(hook) if pre else m.register_forward_hook(hook) for m in modules]
    try:
        model.train()
        with torch.set_grad_enabled(grad):
            return model(x)
    finally:
        for h in hooks:
            h.remove()


def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """sum |theta * dR/dtheta| with R = sum of the outputs for an all-ones input, every weight replaced by its
    absolute value, in float64 and eval mode (so BatchNorm, at its initial statistics, is the identity and no
    data is used). ``model`` is left unchanged."""
    was_training = model.training
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.double().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
        model.zero_grad(set_to_none=True)
        model(torch.ones(1, *input_shape, dtype=torch.float64)).sum().backward()
        return float(sum(float((p.detach() * p.grad).abs().sum()) for p in _weights(model) if p.grad is not None))
    finally:
        model.float()
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _loss_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    out = [(p.detach(), p.grad.detach().clone()) for p in _weights(model) if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """||dL/dtheta||_2 over the weights, L = cross-entropy of the minibatch (train mode)."""
    return math.sqrt(float(sum((g * g).sum() for _, g in _loss_gradients(model, x, y))))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """sum |theta * dL/dtheta| over the weights (connection sensitivity)."""
    return float(sum((p * g).abs().sum() for p, g in _loss_gradients(model, x, y)))


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log |det K|, K[i, j] = the number of ReLUs on which images i and j agree (both active or both not),
    over every ``nn.ReLU`` input of the forward pass (Mellor et al. 2021): networks that separate the images
    of a minibatch into distinct activation patterns score higher."""
    codes: list[torch.Tensor] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes.append((inputs[0].detach() > 0).flatten(1).double())

    forward_hooked(model, x, [m for m in model.modules() if isinstance(m, nn.ReLU)], record, pre=True)
    if not codes:
        raise ValueError("naswot: the network has no nn.ReLU to read activation patterns from")
    c = torch.cat(codes, 1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k)[1])


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    """NASWOT's first score (Mellor et al. 2020): -sum(log(v + k) + 1 / (v + k)), v the eigenvalues of the
    correlation matrix of the images' input Jacobians (of the summed outputs), k = 1e-5: uncorrelated
    Jacobians (v near 1) score highest."""
    model.train()
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    jac = x.grad.flatten(1).double()
    model.zero_grad(set_to_none=True)
    corr = torch.corrcoef(jac)
    corr = torch.nan_to_num(corr, nan=0.0)  # an image with a constant Jacobian correlates with nothing
    v = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-(torch.log(v.clamp_min(0) + k) + 1 / (v.clamp_min(0) + k)).sum())


def proxy_minibatch(data: ChildData, batch_size: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` training images (normalised, at ``image_size``) and labels drawn by ``seed``."""
    n = min(batch_size, len(data.x_train))
    idx = np.sort(np.random.default_rng([seed, 19]).choice(len(data.x_train), n, replace=False))
    return images_to_tensor(data.x_train[idx], image_size, torch.device("cpu")), torch.from_numpy(data.y_train[idx])


class ProxyEstimator(ChildNetworkEstimator):
    needs_data = True

    @classmethod
    def identity(cls, cfg: CfgNode) -> dict[str, Any]:
        """Its own node (if any) and the size of its minibatch, a setting of the zero_cost strategy's node."""
        return {**super().identity(cfg), "SEARCH.ZERO_COST.BATCH_SIZE": int(cfg.SEARCH.ZERO_COST.BATCH_SIZE)}

    def minibatch(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.data is not None, "prepare() first"
        return proxy_minibatch(self.data, int(self.cfg.SEARCH.ZERO_COST.BATCH_SIZE), int(self.cfg.CHILD.IMAGE_SIZE),
                               self.seed)


@ESTIMATORS.register()
class Synflow(ChildNetworkEstimator):
    name = "synflow"

    def score(self, genotype: Genotype) -> float:
        size = int(self.cfg.CHILD.IMAGE_SIZE)
        return synflow(self.child(genotype), (3, size, size))


@ESTIMATORS.register()
class NASWOT(ProxyEstimator):
    name = "naswot"

    def score(self, genotype: Genotype) -> float:
        return naswot(self.child(genotype), self.minibatch()[0])


@ESTIMATORS.register()
class JacobCov(ProxyEstimator):
    name = "jacob_cov"

    def score(self, genotype: Genotype) -> float:
        return jacob_cov(self.child(genotype), self.minibatch()[0])


@ESTIMATORS.register()
class GradNorm(ProxyEstimator):
    name = "grad_norm"

    def score(self, genotype: Genotype) -> float:
        return grad_norm(self.child(genotype), *self.minibatch())


@ESTIMATORS.register()
class Snip(ProxyEstimator):
    name = "snip"

    def score(self, genotype: Genotype) -> float:
        return snip(self.child(genotype), *self.minibatch())
