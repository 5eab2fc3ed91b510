"""AZ-NAS (Lee & Ham, "AZ-NAS: Assembling Zero-Cost Proxies for Network Architecture Search", CVPR 2024;
reference: cvlab-yonsei/AZ-NAS ``NB201/ZeroShotProxy/compute_az_nas_score.py``, its cell network's
``extract_cell_features`` in ``NB201/custom/tss_model.py`` and the aggregation in
``ImageNet_MBV2/evolution_search_az.py``): four proxies from one forward and one backward pass, combined by
non-linear rank aggregation (:mod:`search.estimators.rank`).

The features are the stem's output and each cell's, in the order they are computed. For each feature map
(B x C x H x W as BHW samples of C channels): the entropy of the normalised eigenvalues of its channel
covariance (``expressivity`` sums it over the features; ``progressivity`` is the smallest increase from one
feature to the next). ``trainability``: for each consecutive pair, a random +-1 gradient g_out at the later
feature is back-propagated to the earlier (g_in; pixel-unshuffled to the later feature's resolution when a
reduction lies between), and with s the largest singular value of g_in^T g_out / (BHW) the pair scores
2 - s - 1 / (s + 1e-6) (0 when s = 1: gradients neither explode nor vanish); -inf for a pair whose gradient
passes unchanged; the mean over pairs. ``complexity``: the mult-adds of one image (the reference: FLOPs).
A NaN component counts as -inf. The network is re-initialised as the reference does (Kaiming normal,
fan-in, for convolution and linear weights; zero biases; BatchNorm 1, 0) and run in train mode on the proxy
minibatch (the reference takes a training minibatch or Gaussian noise). Eigenvalues are computed in float64
and clamped at 0 (the reference's float32 ones can come out slightly negative and make a NaN).

The aggregate ranks each component against ``ESTIMATORS.AZ_NAS.REFERENCE_CELLS`` cells drawn by the seed."""

from __future__ import annotations

import math

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from nasnet_det.models.profile import count_mult_adds
from nasnet_det.space import Genotype
from search.estimators.base import ESTIMATORS
from search.estimators.rank import DEFAULT_REFERENCE_CELLS, RankAggregateEstimator, estimator_node
from search.estimators.zero_cost import ProxyEstimator, forward_hooked


def channel_entropy(feature: torch.Tensor) -> float:
    """Entropy of the normalised eigenvalues of the channel covariance of ``feature`` (B x C x H x W)."""
    f = feature.detach().double().permute(0, 2, 3, 1).reshape(-1, feature.shape[1])
    f = f - f.mean(0, keepdim=True)
    s = torch.linalg.eigvalsh(f.T @ f / f.shape[0]).clamp_min(0)
    if float(s.sum()) == 0:
        return 0.0
    p = s / s.sum()
    return float(-(p * torch.log(p + 1e-8)).sum())


def gradient_balance(f_out: torch.Tensor, f_in: torch.Tensor, generator: torch.Generator) -> float:
    """2 - s - 1 / (s + 1e-6), s the largest singular value of g_in^T g_out / N for a random +-1 gradient
    g_out at ``f_out`` back-propagated to ``f_in`` (-inf when it passes unchanged)."""
    g_out = torch.randint(0, 2, f_out.shape, generator=generator).to(f_out.dtype) * 2 - 1
    (g_in,) = torch.autograd.grad(f_out, f_in, grad_outputs=g_out, retain_graph=True, allow_unused=True)
    if g_in is None:  # the later feature does not depend on the earlier one: no gradient reaches it
        g_in = torch.zeros_like(f_in)
    if g_in.shape == g_out.shape and torch.equal(g_in, g_out):
        return -math.inf
    if g_in.shape[2:] != g_out.shape[2:]:
        # a reduction of an odd size rounds up (9 -> 5 px): pad to the next multiple, as the stride-2 conv did
        r = -(-g_in.shape[2] // g_out.shape[2])
        pad_h, pad_w = g_out.shape[2] * r - g_in.shape[2], g_out.shape[3] * r - g_in.shape[3]
        g_in = nn.functional.pixel_unshuffle(nn.functional.pad(g_in, (0, pad_w, 0, pad_h)), r)
    c_out = g_out.shape[1]
    rows_out = g_out.permute(0, 2, 3, 1).reshape(-1, c_out).double()
    rows_in = g_in.permute(0, 2, 3, 1).reshape(-1, g_in.shape[1]).double()
    s_max = float(torch.linalg.svdvals(rows_in.T @ rows_out / rows_out.shape[0]).max())
    return 2.0 - s_max - 1.0 / (s_max + 1e-6)


def az_nas_proxies(model: nn.Module, x: torch.Tensor, stages: list[nn.Module],
                   generator: torch.Generator) -> dict[str, float]:
    """Expressivity, progressivity and trainability of ``model`` on ``x``, its features the outputs of the
    modules ``stages`` (each called once, in order; see the module's docstring)."""
    features: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        features.append(output)

    forward_hooked(model, x, stages, record, grad=True)
    if len(features) < 2:
        raise ValueError(f"az_nas: needs at least 2 features (stem and a cell), got {len(features)}")
    entropy = np.array([channel_entropy(f) for f in features])
    balance = [gradient_balance(features[i], features[i - 1], generator) for i in reversed(range(1, len(features)))]
    out = {"expressivity": float(entropy.sum()), "progressivity": float(np.min(entropy[1:] - entropy[:-1])),
           "trainability": float(np.mean(balance))}
    return {k: (-math.inf if math.isnan(v) else v) for k, v in out.items()}


def kaiming_fan_in_init(model: nn.Module) -> None:
    """The reference's initialisation: Kaiming normal (fan-in, ReLU) convolution and linear weights, zero
    biases, BatchNorm scale 1 and shift 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@ESTIMATORS.register()
class AZNAS(RankAggregateEstimator, ProxyEstimator):
    name = "az_nas"
    config_node = "ESTIMATORS.AZ_NAS"
    node_name = "AZ_NAS"

    @classmethod
    def add_config(cls, cfg: CfgNode) -> None:
        # the az_nas estimator (search/estimators/az_nas.py): its four proxies ranked against those of
        # REFERENCE_CELLS uniformly drawn cells (the seed draws them), log(rank / m) summed
        a = estimator_node(cfg, "AZ_NAS")
        a.REFERENCE_CELLS = DEFAULT_REFERENCE_CELLS

    def components(self, genotype: Genotype) -> dict[str, float]:
        model = self.child(genotype)  # seeds torch with the seed, so the re-initialisation below is the seed's
        kaiming_fan_in_init(model)
        stages = [model.conv0, *(getattr(model, name) for name in model.cell_names)]
        out = az_nas_proxies(model, self.minibatch()[0], stages, torch.Generator().manual_seed(self.seed))
        out["complexity"] = float(count_mult_adds(model, int(self.cfg.CHILD.IMAGE_SIZE)))
        return out
