"""Networks built from cells: op shapes, any genotype at any N@F and B, odd input sizes, drop path."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers.genotypes import random_genotype

from nasnet_det.genotypes import NASNET_A, NASNET_A_LITERAL
from nasnet_det.models import create_model
from nasnet_det.models.nasnet import NASNet, filters_for_penultimate
from nasnet_det.models.ops import Pool2dSame, build_op, drop_path, same_pad_amounts
from nasnet_det.models.pretrained import load_checkpoint, save_checkpoint
from nasnet_det.space import OPS, CellSpec, Genotype

BN = torch.nn.BatchNorm2d


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("size", [7, 8])
def test_every_op_keeps_or_halves_spatial_size(op, size):
    x = torch.randn(2, 6, size, size)
    for stride in (1, 2):
        for c_in, c_out in ((6, 6), (6, 4)):
            module = build_op(op, c_in, c_out, stride, BN)
            y = module(x[:, :c_in])
            expected = math.ceil(size / stride)
            assert y.shape == (2, c_out, expected, expected), (op, stride, c_in, c_out)


def test_same_padding_is_tf_asymmetric_for_even_stride2():
    assert same_pad_amounts(8, 3, 2) == (0, 1)
    assert same_pad_amounts(8, 7, 2) == (2, 3)
    assert same_pad_amounts(7, 3, 2) == (1, 1)


def test_tf_avg_pool_excludes_padding_timm_mode_counts_it():
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(Pool2dSame("avg", 3, 2, "tf")(x), torch.ones(1, 1, 2, 2))
    timm_like = Pool2dSame("avg", 3, 2, "timm")(x)
    assert timm_like[0, 0, 1, 1] == pytest.approx(4 / 9)  # bottom-right window is 2x2 real + 5 padded


@pytest.mark.parametrize("genotype", [NASNET_A, NASNET_A_LITERAL, random_genotype(1, 2), random_genotype(2, 3),
                                      random_genotype(5, 5), random_genotype(7, 7)],
                         ids=lambda g: g.name)
@pytest.mark.parametrize("num_cells, filters", [(1, 4), (2, 6)])
def test_any_genotype_builds_and_runs(genotype, num_cells, filters):
    cifar = create_model("nasnet_a_cifar", genotype=genotype, num_cells=num_cells, filters=filters,
                         drop_path_keep_prob=1.0)
    assert cifar(torch.randn(2, 3, 17, 17)).shape == (2, 10)
    imagenet = create_model("nasnet_a_mobile", genotype=genotype, num_cells=num_cells, filters=filters, num_classes=7,
                            stem_filters=8, dropout=0.0)
    out = imagenet.forward_features(torch.randn(1, 3, 45, 45))
    last = imagenet.feature_info[-1]
    assert out[last.name].shape == (1, last.channels, math.ceil(22 / 16), math.ceil(22 / 16))
    assert imagenet(torch.randn(1, 3, 45, 45)).shape == (1, 7)


@pytest.mark.parametrize("size", [33, 45, 67, 100])
def test_imagenet_feature_taps_at_odd_sizes(size):
    model = create_model("nasnet_a_mobile", filters=8, stem_filters=8, num_cells=1, num_classes=5).eval()
    names = [f.name for f in model.feature_info]
    feats = model.forward_features(torch.randn(1, 3, size, size), names)
    stem = (size - 3) // 2 + 1  # VALID 3x3 stride-2 stem
    for info in model.feature_info:
        expected = stem
        for _ in range(int(math.log2(info.stride)) - 1):
            expected = math.ceil(expected / 2)
        assert feats[info.name].shape == (1, info.channels, expected, expected), info
    assert [f.stride for f in model.feature_info][:4] == [2, 4, 8, 8]


@pytest.mark.parametrize("size", [31, 32, 37])
def test_cifar_shapes_and_aux_head(size):
    model = create_model("nasnet_a_cifar", num_cells=2, filters=4)
    model.train()
    logits, aux = model(torch.randn(3, 3, size, size), return_aux=True)
    assert logits.shape == (3, 10) and aux.shape == (3, 10)
    model.eval()
    logits, aux = model(torch.randn(3, 3, size, size), return_aux=True)
    assert aux is None and logits.shape == (3, 10)


def test_nasnet_a_channel_arithmetic():
    # F = 24 f for NASNet-A; cell outputs 6F/4F of their per-op filters.
    assert filters_for_penultimate(NASNET_A, 4032) == 168
    with pytest.raises(ValueError, match="F=1538 is not a multiple of 24.*nearest valid F: 1536"):
        filters_for_penultimate(NASNET_A, 1538)
    model = create_model("nasnet_a_mobile")
    channels = {f.name: f.channels for f in model.feature_info}
    assert channels["cell_stem_0"] == 44 and channels["cell_stem_1"] == 88
    assert channels["cell_3"] == 264 and channels["reduction_cell_0"] == 352
    assert channels["cell_11"] == 1056 and model.num_features == 1056


def test_drop_path_identity_in_eval_and_unbiased_in_training():
    x = torch.randn(20000, 1, 1, 1).abs() + 1
    assert torch.equal(drop_path(x, 0.3, training=False), x)
    y = drop_path(x, 0.3, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.02)
    assert (y.sum() / x.sum()).item() == pytest.approx(1.0, abs=0.03)


def test_scheduled_drop_path_scales_with_depth_and_progress():
    model = create_model("nasnet_a_cifar", num_cells=1, filters=4, drop_path_keep_prob=0.6)
    cells = [getattr(model, p.name) for p in model.plan]
    assert all(c.drop_prob == 0 for c in cells)
    model.set_drop_path_progress(0.5)
    total = len(model.plan)  # 3N + 2 cells, reductions included (slim)
    assert total == 5
    for i, c in enumerate(cells):
        assert c.drop_prob == pytest.approx(0.4 * (i + 1) / total * 0.5)
    model.set_drop_path_progress(2.0)  # clamped: the last cell reaches keep = 0.6 at the end
    assert cells[-1].drop_prob == pytest.approx(0.4)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))


def test_drop_path_schedule_on_a_split_network():
    # The C4 detector keeps the trunk and the head's cells in separate copies of the network.
    model = create_model("nasnet_a_mobile", num_cells=1, filters=8, drop_path_keep_prob=0.5)
    del model.cell_2
    model.set_drop_path_progress(1.0)
    assert model.reduction_cell_1.drop_prob == pytest.approx(0.5 * 6 / 7)


def test_drop_path_inside_a_cell_spares_identity_paths():
    # NASNet-A normal block 4 is sep_conv_3x3(h_i) + identity(h_i): with every other path dropped, only the
    # identity survives, so state 6 equals the adjusted h_i.
    model = create_model("nasnet_a_cifar", num_cells=1, filters=4).train()
    cell = model.cell_0  # h_i = the 12-channel stem output, h_{i-1} = None
    cell.drop_prob = 1.0 - 1e-7
    x = torch.randn(2, 12, 8, 8)
    out = cell(x, None)
    f = cell.filters
    assert out.shape == (2, 6 * f, 8, 8)
    assert torch.allclose(out[:, 5 * f:], cell.conv_1x1(x))
    assert torch.count_nonzero(out[:, f:2 * f]) == 0  # block 0: two separable convs, both dropped


def test_inference_mode_then_training_at_the_same_size():
    model = create_model("nasnet_a_mobile", num_cells=1, filters=8, stem_filters=8)
    x = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()  # cached pooling divisors must not be inference tensors


def test_reduction_concat_with_input_states():
    # The stride-2 output reduction of unused inputs (slim cell_output/reduction_<idx>).
    genotype = Genotype(NASNET_A.normal, CellSpec(NASNET_A.reduce.blocks, (0, 1, 3, 4, 5, 6)), "wide_reduce")
    model = create_model("nasnet_a_mobile", genotype=genotype, num_cells=1, filters=8, stem_filters=8, num_classes=3,
                         dropout=0.0)
    assert model(torch.randn(1, 3, 45, 45)).shape == (1, 3)
    assert model.reduction_cell_0.out_channels == 6 * 16
    with pytest.raises(ValueError, match="cell_stem_0 \\(1 filters per op\\) cannot be built: a stride-2 factorized"):
        create_model("nasnet_a_mobile", genotype=genotype, num_cells=1, filters=4, stem_filters=8)
    with pytest.raises(ValueError, match="need f >= 4"):
        create_model("nasnet_a_mobile", filters=3)


def test_checkpoint_overrides_must_explain_mismatches(tmp_path):
    model = create_model("nasnet_a_cifar", num_cells=1, filters=4, drop_path_keep_prob=1.0)
    path = save_checkpoint(model, tmp_path / "m.pth")
    retargeted, _ = load_checkpoint(path, num_classes=100)
    assert retargeted.last_linear.out_features == 100
    assert torch.equal(retargeted.cell_0.conv_1x1.conv.weight, model.cell_0.conv_1x1.conv.weight)
    with pytest.raises(ValueError, match="do not fit the architecture.*overrides \\['filters'\\]"):
        load_checkpoint(path, filters=8)


def test_checkpoint_round_trip_rebuilds_from_file(tmp_path):
    model = create_model("nasnet_a_cifar", genotype=random_genotype(11, 3), num_cells=1, filters=4).eval()
    path = save_checkpoint(model, tmp_path / "m.pth", step=7)
    loaded, payload = load_checkpoint(path)
    loaded.eval()
    x = torch.randn(2, 3, 16, 16)
    assert payload["step"] == 7
    assert loaded.genotype == model.genotype
    assert torch.equal(loaded(x), model(x))


def test_module_conversions_keep_the_network_usable():
    model = create_model("nasnet_a_mobile", num_cells=1, filters=8, stem_filters=8).eval()
    x = torch.randn(1, 3, 40, 40)
    expected = model(x).double()
    converted = copy.deepcopy(model).to(torch.float64)
    assert torch.allclose(converted(x.double()), expected, rtol=1e-4, atol=1e-4)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="drop_path_keep_prob must be in"):
        create_model("nasnet_a_cifar", drop_path_keep_prob=0.0)
    with pytest.raises(KeyError, match="unknown model 'nasnet_a_huge'"):
        create_model("nasnet_a_huge")
    with pytest.raises(TypeError, match="NASNet takes a Genotype"):  # names and files: create_model resolves them
        NASNet("nasnet_a")
    with pytest.raises(KeyError, match="no feature named 'cell_99'"):
        create_model("nasnet_a_cifar", num_cells=1, filters=4).forward_features(torch.randn(1, 3, 8, 8), ["cell_99"])
