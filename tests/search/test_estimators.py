"""Cheap estimators of a cell's quality (search/estimators): each registered one gives a finite score that the
seed decides, and the proxies compute what their definitions say on networks small enough to do by hand."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.search import random_cells, scores_of_two_builds
from torch import nn

from nasnet_det.data.cifar import synthetic_cifar
from nasnet_det.utils.errors import BadInputError
from search.config import load_cfg
from search.estimators import ESTIMATORS, build_estimator
from search.estimators.zero_cost import naswot, synflow
from search.reward import ChildData

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ZERO_COST = ("params", "madds", "synflow", "naswot", "jacob_cov", "grad_norm", "snip")


def tiny_cfg(*opts):
    return load_cfg(None, ["SEARCH.NUM_BLOCKS", "2", "MODEL.NASNET.FILTERS", "4", "CHILD.IMAGE_SIZE", "8",
                           "SEARCH.ZERO_COST.BATCH_SIZE", "8", *map(str, opts)])


@pytest.fixture(scope="module")
def tiny_data():
    x, y = synthetic_cifar(80)
    return ChildData.from_arrays(x, y, 20)


@pytest.mark.parametrize("name", ZERO_COST)
def test_every_zero_cost_estimator_is_finite_and_seed_deterministic(name, tiny_data):
    scores = scores_of_two_builds(name, tiny_cfg(), tiny_data, 3, random_cells(2))
    assert all(math.isfinite(s) for s in scores[0])
    assert scores[0] == scores[1]
    assert scores[0][0] != scores[0][1]  # two different cells: the score tells them apart


def test_synflow_by_hand():
    # no bias, no nonlinearity: R = 1^T |W2| |W1| 1 = [1, 1] . [3, 7] = 10 and each layer's
    # sum |theta dR/dtheta| equals R, so synflow = 2 R = 20
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        net[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert synflow(net, (2,)) == pytest.approx(20.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the network is left as it was
    assert net[0].weight.dtype == torch.float32


def test_naswot_by_hand():
    # ReLU inputs = x: codes [1,0], [1,1], [0,0]; agreements K = [[2,1,1],[1,2,0],[1,0,2]], det 4
    net = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert naswot(net, x) == pytest.approx(math.log(4.0))


def test_unknown_estimator_is_one_line_naming_the_registered_ones():
    with pytest.raises(BadInputError, match="expected one of") as e:
        build_estimator("flops", tiny_cfg(), key="SEARCH.ZERO_COST.PROXY")
    assert "SEARCH.ZERO_COST.PROXY='flops'" in str(e.value) and "synflow" in str(e.value)
    assert set(ZERO_COST) <= set(ESTIMATORS.names())
