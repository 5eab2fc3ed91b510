"""MeCo (Jiang et al., "MeCo: Zero-Shot NAS with One Data and Single Forward Pass via Minimum Eigenvalue of
Correlation", NeurIPS 2023; reference: HamsterMimi/MeCo ``zero-cost-nas/foresight/pruners/measures/meco.py``).

A forward hook on every module of the network (the network itself and its containers included, as the
reference's ``named_modules`` loop does) takes the first sample's output, reshaped to C x (the rest), e.g.
C x HW for a feature map; the minimum eigenvalue of the Pearson correlation matrix of its C rows (NaN and
infinite entries, from constant rows, set to 0), summed over the modules, NaN eigenvalues left out. The
minibatch is forwarded once in train mode (BatchNorm with the batch's statistics; only the first sample's
features are used). A module whose output is not a tensor (a tuple) is skipped: the reference would read its
first element, the whole batch, which is not a feature map of the sample."""

from __future__ import annotations

import torch
from torch import nn

from nasnet_det.space import Genotype
from search.estimators.base import ESTIMATORS
from search.estimators.zero_cost import ProxyEstimator, forward_hooked


def min_correlation_eigenvalue(rows: torch.Tensor) -> float:
    """The smallest eigenvalue of the Pearson correlation matrix of the rows of ``rows`` (C x N), in float64,
    a NaN or infinite entry set to 0."""
    if rows.shape[1] < 2:  # one value per row: every correlation is NaN, set to 0
        return 0.0
    corr = torch.corrcoef(rows.double())
    corr = torch.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0)
    if corr.dim() == 0:  # a single row: a 1 x 1 matrix
        corr = corr.reshape(1, 1)
    return float(torch.linalg.eigvalsh(corr)[0])


def meco(model: nn.Module, x: torch.Tensor) -> float:
    """MeCo of ``model`` on the minibatch ``x`` (see the module's docstring)."""
    values: list[float] = []

    def record(_module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() >= 2:  # a sample's output: at least a vector
            first = output[0].detach()
            values.append(min_correlation_eigenvalue(first.reshape(first.shape[0], -1)))

    forward_hooked(model, x, model.modules(), record)
    return float(sum(v for v in values if v == v))  # v != v: NaN


@ESTIMATORS.register()
class MeCo(ProxyEstimator):
    name = "meco"

    def score(self, genotype: Genotype) -> float:
        return meco(self.child(genotype), self.minibatch()[0])
