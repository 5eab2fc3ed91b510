"""Supernet estimators (search/estimators/supernet.py, on the supernet trainer of search/supernet_trainer.py):
seed-deterministic scores, FairNAS's strict fairness,
BatchNorm recalibration used in scoring, and few-shot splits that partition the space."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.search import random_cells, scores_of_two_builds
from torch import nn

from nasnet_det.data.cifar import synthetic_cifar
from nasnet_det.space import OPS
from nasnet_det.utils.errors import BadInputError
from search.config import load_cfg
from search.estimators import build_estimator
from search.reward import ChildData
from search.supernet import recalibrate_bn
from search.supernet_trainer import FEW_SHOT_DECISION, few_shot_split, supernet_accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(*opts):
    return load_cfg(None, ["SEARCH.NUM_BLOCKS", "2", "MODEL.NASNET.FILTERS", "4", "CHILD.IMAGE_SIZE", "8",
                           "ONESHOT.EPOCHS", "1", "ONESHOT.WEIGHT_STEPS", "2", "ONESHOT.BATCH_SIZE", "8",
                           "ONESHOT.CONTROLLER_STEPS", "1", "SEARCH.BATCH_SIZE", "2", "ONESHOT.FINAL_SAMPLES", "2",
                           "ONESHOT.FEW_SHOT_SPLITS", "2", "ONESHOT.BN_RECALIBRATION_BATCHES", "2",
                           *map(str, opts)])


@pytest.fixture(scope="module")
def tiny_data():
    x, y = synthetic_cifar(60)
    return ChildData.from_arrays(x, y, 20)


@pytest.mark.parametrize("name", ["spos", "fairnas_bn", "fewshot"])
def test_supernet_estimators_are_finite_and_seed_deterministic(name, tiny_data):
    scores = scores_of_two_builds(name, tiny_cfg(), tiny_data, 1, random_cells(2))
    assert all(math.isfinite(s) and 0 <= s <= 1 for s in scores[0])
    assert scores[0] == scores[1]


def test_the_one_shot_search_supernet_scores_cells(tiny_data):
    est = build_estimator("supernet", tiny_cfg())  # today's search (controller-sampled paths), run once
    est.prepare(tiny_data, seed=1)
    scores = [est.score(c) for c in random_cells(2)]
    assert all(0 <= s <= 1 for s in scores) and scores == [est.score(c) for c in random_cells(2)]


def test_fairnas_trains_every_op_of_a_slot_equally_often(tiny_data):
    fair = build_estimator("fairnas", tiny_cfg())
    fair.prepare(tiny_data, seed=0)
    counts = fair.trainer.op_counts  # [op decisions (8 for B=2), 13 ops]: paths trained with that op there
    assert counts.shape == (8, len(OPS)) and (counts == 2).all()  # 2 updates x each op once per slot
    spos = build_estimator("spos", tiny_cfg())
    spos.prepare(tiny_data, seed=0)
    counts = spos.trainer.op_counts
    assert counts.sum() == 2 * 8 and (counts != counts[:, :1]).any()  # not fair


def test_bn_recalibration_changes_the_running_stats_and_is_used_in_scoring(tiny_data):
    est = build_estimator("spos_bn", tiny_cfg("ONESHOT.BN_RECALIBRATION_BATCHES", 3))
    est.prepare(tiny_data, seed=0)  # 2 training updates
    a, b = random_cells(2, seed=3)
    net = est.nets[0]
    bn = net.conv0.bn
    score_a = est.score(a)  # recalibrates for a, then scores in eval mode with those statistics
    assert bn.num_batches_tracked.item() == 3  # reset, then the 3 recalibration batches
    x, y = est.trainer.x_val, est.trainer.y_val
    net.eval()
    logits_a = net(x, a)
    assert score_a == supernet_accuracy(net, a, x, y, 256)
    recalibrate_bn(net, b, est.trainer.recalibration_batches())  # another cell's statistics
    net.eval()
    cell_bn = [m for m in net.cell_0.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not torch.allclose(logits_a, net(x, a))  # the running statistics are what eval mode scores with
    assert all(m.num_batches_tracked.item() == 3 for m in cell_bn if m.num_batches_tracked.item())
    assert est.score(a) == score_a  # the same batches every time: the score does not depend on the order


def test_few_shot_splits_partition_the_space(tiny_data):
    splits = 3
    owners = [few_shot_split([0, 0, op] + [0] * 17, splits) for op in range(len(OPS))]
    assert sorted(set(owners)) == [0, 1, 2]  # every op belongs to exactly one split, none is empty
    est = build_estimator("fewshot", tiny_cfg("ONESHOT.FEW_SHOT_SPLITS", splits, "ONESHOT.WEIGHT_STEPS", 6))
    est.prepare(tiny_data, seed=0)
    assert len(est.nets) == splits and len({id(n) for n in est.nets}) == splits
    for g in random_cells(6):
        d = est.trainer.space.decisions(g)
        assert est.supernet_for(g) is est.nets[d[FEW_SHOT_DECISION] % splits]
    # the split decision is op decision 0: 3 shared uniform updates, then 1 update per split in its subspace
    assert est.trainer.op_counts[0].sum() == 6
    for k in range(splits):  # a split's updates draw the split decision from its own ops only
        drawn = [op for _ in range(5) for op in est.trainer.draw_paths(False, k, splits)[:, FEW_SHOT_DECISION].tolist()]
        assert all(op % splits == k for op in drawn)


def test_few_shot_splits_train_at_the_same_learning_rates(tiny_data, monkeypatch):
    lrs = []
    step = torch.optim.SGD.step

    def recording_step(opt, *args, **kwargs):
        lrs.append(opt.param_groups[0]["lr"])
        return step(opt, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    est = build_estimator("fewshot", tiny_cfg("ONESHOT.FEW_SHOT_SPLITS", 2, "ONESHOT.WEIGHT_STEPS", 8))
    est.prepare(tiny_data, seed=0)
    shared, first, second = lrs[:4], lrs[4:6], lrs[6:8]
    assert len(lrs) == 8 and first == second  # both splits: the same rest of the schedule
    assert shared[0] > first[0] > first[1]


def test_single_path_supernets_score_nasnet_a_which_concatenates_a_cell_input(tiny_data):
    from nasnet_det.genotypes import NASNET_A

    assert any(i < 2 for i in NASNET_A.normal.concat)  # h_{i-1} is one of its normal cell's loose ends
    est = build_estimator("spos", tiny_cfg("SEARCH.NUM_BLOCKS", 5, "ONESHOT.WEIGHT_STEPS", 8))
    est.prepare(tiny_data, seed=0)
    assert 0 <= est.score(NASNET_A) <= 1
    # the input states' output convs were trained (the paths add inputs to their concat lists)
    fresh = dict(est.trainer.new_supernet().named_parameters())
    trained = {k: v for k, v in est.nets[0].named_parameters() if "input_out_conv" in k}
    assert trained and all(not torch.equal(v, fresh[k]) for k, v in trained.items())


def test_loose_input_convs_leave_every_other_initial_weight_unchanged():
    from search.supernet import SuperNet

    torch.manual_seed(3)
    plain = SuperNet(2, 1, 4).state_dict()
    torch.manual_seed(3)
    loose = SuperNet(2, 1, 4, loose_inputs=True).state_dict()
    assert set(loose) - set(plain) and all(torch.equal(plain[k], loose[k]) for k in plain)


def test_with_loose_inputs_adds_each_input_half_of_the_time():
    from search.supernet import with_loose_inputs

    gen = torch.Generator().manual_seed(0)
    cell = random_cells(1)[0]
    drawn = [with_loose_inputs(cell, gen) for _ in range(400)]
    for side in ("normal", "reduce"):
        base = getattr(cell, side).concat
        for state in (0, 1):
            share = sum(state in getattr(g, side).concat for g in drawn) / len(drawn)
            assert 0.4 < share < 0.6
        assert all(set(base) <= set(getattr(g, side).concat) for g in drawn)


def test_the_one_shot_search_supernet_refuses_a_cell_input_loose_end_naming_the_cell(tiny_data):
    from nasnet_det.genotypes import NASNET_A
    from search.supernet import SuperNet, UnscorableCellError

    with pytest.raises(UnscorableCellError, match="normal cell: this supernet's cell output is built from block"):
        SuperNet(5, 1, 4).check_genotype(NASNET_A)
    # an invalid cell is another error (the bench ranks an estimator without the cells it cannot score, only)
    with pytest.raises(ValueError) as e:
        SuperNet(2, 1, 4).check_genotype(NASNET_A)
    assert not isinstance(e.value, UnscorableCellError)


def test_the_supernet_trainer_runs_one_cosine_schedule_from_lr_to_lr_min(tiny_data):
    from search.supernet_trainer import SupernetTrainer

    trainer = SupernetTrainer(tiny_cfg("ONESHOT.LR", 0.1, "ONESHOT.LR_MIN", 0.001), tiny_data, torch.device("cpu"), 0)
    assert trainer.total_updates == 2  # ONESHOT.EPOCHS x ONESHOT.WEIGHT_STEPS
    assert trainer.learning_rate(0) == 0.1 and math.isclose(trainer.learning_rate(2), 0.001)
    assert trainer.learning_rate(0.5) > trainer.learning_rate(1) > trainer.learning_rate(1.5) > 0.001


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_supernet_estimator_on_cuda_without_a_gpu_is_one_line_naming_the_key(tiny_data, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a usable GPU
    with pytest.raises(BadInputError, match=f"ONESHOT.DEVICE is '{device}' but CUDA is not usable here"):
        build_estimator("spos", tiny_cfg("ONESHOT.DEVICE", device)).prepare(tiny_data, 0)
