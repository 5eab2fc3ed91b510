"""The estimators after 2021 (search/estimators: zico, meco, swap, swap_reg, az_nas, ensemble) and their rank
aggregation: each proxy computes what its paper defines on a network small enough to do by hand, each registered
estimator gives a finite score the seed decides, and a bad setting is one line naming its key."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.search import random_cells, scores_of_two_builds
from torch import nn

from nasnet_det.data.cifar import synthetic_cifar
from search.config import load_cfg
from search.estimators import build_estimator
from search.estimators.az_nas import az_nas_proxies, channel_entropy, gradient_balance
from search.estimators.meco import meco
from search.estimators.rank import continuous_rank, rank_aggregate
from search.estimators.swap import log_size_factor, swap
from search.estimators.zico import zico
from search.reward import ChildData

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECENT = ("zico", "meco", "swap", "swap_reg", "az_nas", "ensemble")


def tiny_cfg(*opts):
    # a 1 @ f=4 child of 2-block cells on 16 px images; small reference populations for the rank aggregates
    return load_cfg(None, ["SEARCH.NUM_BLOCKS", "2", "MODEL.NASNET.FILTERS", "4", "CHILD.IMAGE_SIZE", "16",
                           "SEARCH.ZERO_COST.BATCH_SIZE", "16", "ESTIMATORS.AZ_NAS.REFERENCE_CELLS", "3",
                           "ESTIMATORS.ENSEMBLE.REFERENCE_CELLS", "3",
                           "ESTIMATORS.ENSEMBLE.MEMBERS", "params,naswot,zico", *map(str, opts)])


@pytest.fixture(scope="module")
def tiny_data():
    x, y = synthetic_cifar(80)
    return ChildData.from_arrays(x, y, 20)


@pytest.mark.parametrize("name", RECENT)
def test_every_recent_estimator_is_finite_and_seed_deterministic(name, tiny_data):
    scores = scores_of_two_builds(name, tiny_cfg(), tiny_data, 3, random_cells(2))
    assert all(math.isfinite(s) for s in scores[0])
    assert scores[0] == scores[1]
    if name in ("az_nas", "ensemble"):  # each term log(rank / m) lies in [log(1 / m), 0], m = 3 + 1
        components = 4 if name == "az_nas" else 3
        assert all(components * math.log(1 / 4) <= s <= 0 for s in scores[0])


def test_a_rank_aggregate_does_not_depend_on_the_other_cells_scored(tiny_data):
    cells = random_cells(3, seed=5)
    est = build_estimator("ensemble", tiny_cfg("ESTIMATORS.ENSEMBLE.MEMBERS", "params,synflow"))
    est.prepare(tiny_data, seed=1)
    alone = est.score(cells[2])
    assert [est.score(g) for g in cells][2] == alone


def test_zico_by_hand():
    # W = 0: softmax = [.5, .5]; label 0 -> dL/dW = [[-.5], [.5]] x^T. Batch 1 x = [1, 2, 1], batch 2
    # x = [2, 0, 1]: row 0 gradients (-.5, -1), (-1, 0), (-.5, -.5); row 1 their negatives. mean|g| / std:
    # .75 / .25 = 3, .5 / .5 = 1, and the third column has std 0 (left out): 2 (3 + 1) = 8, log 8
    net = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    batches = [(torch.tensor([[1.0, 2.0, 1.0]]), torch.tensor([0])),
               (torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([0]))]
    assert zico(net, batches) == pytest.approx(math.log(8.0))
    assert net.weight.grad is None
    with pytest.raises(ValueError, match="at least 2 minibatches"):
        zico(net, batches[:1])


def test_meco_by_hand():
    # the first sample as 2 channels x 3 pixels: [1, 2, 3] and [1, 3, 2] correlate 0.5, eigenvalues .5 and 1.5;
    # the hook is on every module, the Sequential and its Identity: 2 x 0.5 (the second sample is not read)
    net = nn.Sequential(nn.Identity())
    x = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 3.0, 2.0]], [[5.0, 0.0, 1.0], [0.0, 0.0, 7.0]]])
    assert meco(net, x) == pytest.approx(1.0)
    # a constant channel correlates with nothing (NaN set to 0): [[0, 0], [0, 1]] has eigenvalue 0
    x_const = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 3.0, 2.0]]])
    assert meco(net, x_const) == pytest.approx(0.0)


def test_swap_by_hand():
    # 2 images x 4 neurons (1 x 1 x 4 maps) after ReLU: signs per neuron (1, 1), (0, 1), (1, 0), (1, 1):
    # 3 distinct patterns; the ReLU after Flatten has a 2-d input, so it is not read
    net = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4, 4), nn.ReLU())
    x = torch.tensor([[1.0, -1.0, 2.0, 3.0], [1.0, 1.0, -1.0, 5.0]]).reshape(2, 1, 1, 4)
    assert swap(net, x) == 3
    assert log_size_factor(2_000, mu=1.0, sigma=2.0) == pytest.approx(-0.5)


def test_az_nas_parts_by_hand():
    # two uncorrelated channels of equal variance: eigenvalues equal, entropy log 2; one channel: 0
    f = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]).reshape(1, 2, 1, 4)
    assert channel_entropy(f) == pytest.approx(math.log(2.0), abs=1e-6)
    assert channel_entropy(f[:, :1]) == pytest.approx(0.0, abs=1e-6)
    # f_out = 2 f_in (one channel): g_in = 2 g_out, g_in^T g_out / N = 2 = s, score 2 - 2 - 1 / 2
    f_in = torch.randn(2, 1, 3, 3, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    assert gradient_balance(2 * f_in, f_in, gen) == pytest.approx(-0.5, abs=1e-5)
    assert gradient_balance(f_in * 1.0, f_in, gen) == -math.inf  # the gradient passes unchanged
    # a stride-2 stage: g_in pixel-unshuffled to the later resolution (4 channels), one of which carries g_out
    pool = nn.Conv2d(1, 1, 1, stride=2, bias=False)
    with torch.no_grad():
        pool.weight.fill_(3.0)
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    assert gradient_balance(pool(x), x, gen) == pytest.approx(2 - 3 - 1 / 3, abs=1e-5)


def test_az_nas_proxies_of_a_two_stage_network():
    # stage 1 copies its 2-channel input, stage 2 doubles it: both have entropy log 2 (expressivity 2 log 2,
    # progressivity 0) and the one pair's gradient is doubled (trainability -0.5)
    stage_1, stage_2 = nn.Conv2d(2, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        stage_1.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
        stage_2.weight.copy_(2 * torch.eye(2).reshape(2, 2, 1, 1))
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]).reshape(1, 2, 1, 4)
    out = az_nas_proxies(nn.Sequential(stage_1, stage_2), x, [stage_1, stage_2], torch.Generator().manual_seed(0))
    assert out["expressivity"] == pytest.approx(2 * math.log(2.0), abs=1e-6)
    assert out["progressivity"] == pytest.approx(0.0, abs=1e-6)
    assert out["trainability"] == pytest.approx(-0.5, abs=1e-5)


def test_continuous_rank_and_aggregate_by_hand():
    ref = [1.0, 2.0, 3.0]
    assert continuous_rank(2.0, ref) == 2.5  # rankdata of [1, 2, 3, 2]: the tied 2s take (2 + 3) / 2
    assert continuous_rank(0.0, ref) == 1.0 and continuous_rank(9.0, ref) == 4.0
    assert continuous_rank(2.5, ref) == 3.0  # halfway between 2 (2.5) and 3 (3.5)
    assert continuous_rank(2.25, ref) == 2.75  # interpolated: cells between two references keep their order
    assert continuous_rank(float("nan"), ref) == 1.0  # NaN is the worst
    assert continuous_rank(-math.inf, [-math.inf, 0.0]) == 1.5  # ties with -inf counted half
    # best in one component (log 1) and worst in the other (log 1/4)
    assert rank_aggregate({"a": 4.0, "b": 0.0}, {"a": ref, "b": ref}) == pytest.approx(-math.log(4.0))


@pytest.mark.parametrize("key,value", [("ESTIMATORS.ZICO.BATCHES", "1"), ("ESTIMATORS.SWAP.IMAGES", "1"),
                                       ("ESTIMATORS.SWAP.REPEATS", "0"), ("ESTIMATORS.SWAP.SIGMA", "0.0"),
                                       ("ESTIMATORS.AZ_NAS.REFERENCE_CELLS", "1"),
                                       ("ESTIMATORS.ENSEMBLE.REFERENCE_CELLS", "1"),
                                       ("ESTIMATORS.ENSEMBLE.MEMBERS", "params"),
                                       ("ESTIMATORS.ENSEMBLE.MEMBERS", "params,flops"),
                                       ("ESTIMATORS.ENSEMBLE.MEMBERS", "params,params"),
                                       ("ESTIMATORS.ENSEMBLE.MEMBERS", "params,ensemble")])
def test_a_bad_setting_is_one_line_naming_its_key(key, value):
    with pytest.raises(ValueError) as e:
        load_cfg(None, [key, value])
    assert str(e.value).startswith(f"{key}=") and "\n" not in str(e.value)


def test_swap_reg_keeps_ranking_cells_of_a_network_far_from_mu():
    # was: exp(-(params / 1e3 - MU)^2 / SIGMA) underflowed to 0.0 for every cell of a ~3M-parameter network
    # (2 @ f=32), so swap_reg scored every cell 0 and the zero_cost search picked in drawing order
    small, large = (math.log(40_000) + log_size_factor(p, mu=183.0, sigma=1900.0) for p in (3_000_000, 3_100_000))
    assert math.isfinite(small) and math.isfinite(large) and small > large


@pytest.mark.parametrize("image_size", [18, 22])
def test_az_nas_scores_a_child_whose_reductions_round_up(image_size: int, tiny_data):
    # was: RuntimeError (mat1 and mat2 shapes cannot be multiplied) when a reduction rounded up (18 -> 9 -> 5 px)
    scores = scores_of_two_builds("az_nas", tiny_cfg("CHILD.IMAGE_SIZE", image_size), tiny_data, 0, random_cells(1))
    assert all(math.isfinite(s) for s in scores[0])
