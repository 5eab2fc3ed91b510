"""The fast inference path (BatchNorm folded into the convs) gives the logits of the normal path; the op
table is the search space's; the padding-free stride-2 pools equal explicit TF 'SAME' padding."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nasnet_det import space
from nasnet_det.models import create_model
from nasnet_det.models.fuse import fuse_for_inference
from nasnet_det.models.ops import OPS, Pool2dSame, same_pad_amounts


def with_random_bn_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN affine parameters and running statistics taken from a batch of random images (then
    perturbed), so that folding errors show and activations stay in a sane range."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running stats = this batch's
            m.weight.data = torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=g, dtype=m.bias.dtype) - 0.5
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 67, 67, generator=g, dtype=next(model.parameters()).dtype) * 2 + 0.3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.mul_(torch.rand(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype) * .4 + .8)
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) * .4 + .8)
    return model.eval()


MODELS = {
    "mobile": ("nasnet_a_mobile", dict(num_cells=2, penultimate_filters=264, num_classes=10)),
    # The large layout (skip_reduction_layer_input, stem 96, timm padding) at reduced N@F.
    "large": ("nasnet_a_large", dict(num_cells=2, penultimate_filters=384, pad_mode="timm", num_classes=10)),
}


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("size", [(59, 59), (48, 65)])
def test_fused_model_gives_the_same_logits(which, size):
    name, kwargs = MODELS[which]
    torch.manual_seed(0)
    model = with_random_bn_statistics(create_model(name, **kwargs))
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert expected.abs().max() > 1e-2  # logits that say something
    assert (expected - got).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
    with torch.no_grad():
        expected64 = model.double()(x.double())
        got64 = fuse_for_inference(model)(x.double())
    assert (expected64 - got64).abs().max().item() < 1e-4


def test_fused_model_channels_last_and_original_untouched():
    name, kwargs = MODELS["mobile"]
    model = with_random_bn_statistics(create_model(name, **kwargs))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = model.fuse_for_inference(channels_last=True)
    x = torch.randn(1, 3, 61, 61)
    with torch.no_grad():
        diff = (model(x) - fused(x.contiguous(memory_format=torch.channels_last))).abs().max().item()
    assert diff < 1e-4 * max(1.0, model(x).abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()  # the original still trains
    with pytest.raises(RuntimeError, match="eval mode only"):
        fused.train()
    assert fused.eval() is fused


def test_create_model_fast_inference_switch():
    name, kwargs = MODELS["mobile"]
    fast = create_model(name, fast_inference=True, **kwargs)
    assert getattr(fast, "is_fused", False) and not fast.training
    assert fast(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_fused_detection_backbone_with_frozen_bn():
    from detectron2.layers import FrozenBatchNorm2d

    name, kwargs = MODELS["mobile"]
    model = with_random_bn_statistics(create_model(name, **kwargs))
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    fused = fuse_for_inference(frozen)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = frozen.forward_features(x, ["cell_1"])["cell_1"], fused.forward_features(x, ["cell_1"])["cell_1"]
    assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


def test_op_table_is_the_search_space():
    assert list(OPS) == list(space.OPS)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("pad_mode", ["tf", "timm"])
def test_stride2_pool_equals_explicit_same_padding(kind, pad_mode):
    for h, w in [(3, 3), (8, 8), (7, 10), (13, 6)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        for k in (3, 5, 7):
            t, b = same_pad_amounts(h, k, 2)
            left, right = same_pad_amounts(w, k, 2)
            if kind == "max":
                ref = F.max_pool2d(F.pad(x, (left, right, t, b), value=-math.inf), k, 2)
            else:
                ref = F.avg_pool2d(F.pad(x, (left, right, t, b)), k, 2)
                if pad_mode == "tf":  # TF averages over real pixels only
                    ref = ref / F.avg_pool2d(F.pad(torch.ones_like(x), (left, right, t, b)), k, 2)
            got = Pool2dSame(kind, k, 2, pad_mode)(x)
            assert got.shape == ref.shape, (h, w, k)
            assert torch.allclose(got, ref, atol=1e-12), (h, w, k)


@pytest.mark.parametrize("layout", ["fpn", "c4"])
def test_detector_fuses_bn_at_inference_when_asked(layout):
    """MODEL.NASNET.FUSE_BN_AT_INFERENCE: eval runs a folded copy (same outputs), rebuilt after a weight change;
    training still runs the real network."""
    from detectron2.modeling import build_model

    from nasnet_det.detection.config import get_nasnet_cfg

    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parents[2] / "configs" / "detection"
                            / f"smoke-nasnet-{layout}.yaml"))
    n = cfg.MODEL.NASNET
    n.NUM_CELLS, n.PENULTIMATE_FILTERS, n.FILTERS, n.STEM_FILTERS, n.NORM = 1, 0, 4, 8, "BN"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.bias.data.uniform_(-.2, .2)
    holders = [m for m in model.modules() if hasattr(type(m), "nasnet_for_forward")]
    assert len(holders) == (1 if layout == "fpn" else 2)  # the backbone (+ the C4 ROI crop head)
    inputs = [torch.rand(1, 3, 64, 64) if not hasattr(h, "in_channels") else torch.rand(3, h.in_channels, 7, 7)
              for h in holders]

    def outputs() -> list[torch.Tensor]:
        outs = [h(x) for h, x in zip(holders, inputs)]
        return [o if torch.is_tensor(o) else torch.cat([v.flatten() for v in o.values()]) for o in outs]

    with torch.no_grad():
        plain = outputs()
        for h in holders:
            h.fuse_bn_at_inference = True
        fused = outputs()
        assert all(h.nasnet_for_forward() is not h.nasnet for h in holders)
        for a, b in zip(plain, fused):
            assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())
        first = holders[0].nasnet_for_forward()
        assert holders[0].nasnet_for_forward() is first  # cached while nothing changes
        next(holders[0].nasnet.parameters()).mul_(1.5)  # a weight changes: the folded copy is rebuilt
        assert holders[0].nasnet_for_forward() is not first
    model.train()
    assert all(h.nasnet_for_forward() is h.nasnet for h in holders)
    assert get_nasnet_cfg().MODEL.NASNET.FUSE_BN_AT_INFERENCE is False


def test_folded_copy_for_eval_follows_every_weight_change():
    """FusedForEval (what FUSE_BN_AT_INFERENCE uses) never serves a stale copy: it is rebuilt after a
    loaded state dict, a dtype/device move, a replaced parameter and a training step (BN statistics too)."""
    from nasnet_det.models.fuse import FusedForEval

    torch.manual_seed(0)
    model = with_random_bn_statistics(create_model("nasnet_a_mobile", num_cells=1, penultimate_filters=132,
                                                   num_classes=10))
    cache, x = FusedForEval(), torch.randn(1, 3, 35, 35)

    def same_as_model() -> bool:
        inp = x.to(next(model.parameters()).dtype)
        with torch.no_grad():
            a, b = model.eval()(inp), cache.get(model)(inp)
        return (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())

    assert same_as_model() and cache.get(model) is cache.get(model)
    model.load_state_dict({k: v * 1.2 if v.is_floating_point() else v for k, v in model.state_dict().items()})
    assert same_as_model()
    model.double()
    assert cache.get(model).conv0.conv.weight.dtype == torch.float64 and same_as_model()
    model.float()
    model.conv0.conv.weight = torch.nn.Parameter(model.conv0.conv.weight.detach() * 0.5)
    assert same_as_model()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    F.cross_entropy(model(torch.randn(2, 3, 35, 35)), torch.tensor([1, 2])).backward()
    opt.step()
    assert same_as_model()
    # The aux head (used in training only) is folded too, and equals the model's in eval mode.
    h = torch.randn(1, model.aux_head.proj.in_channels, 9, 9)
    with torch.no_grad():
        a, b = model.eval().aux_head(h), cache.get(model).aux_head(h)
    assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


def _layouts(model: torch.nn.Module) -> set[bool]:
    """For each 4-D weight: is it channels_last (and not also plain contiguous, as 1x1 maps can be)?"""
    return {p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in model.parameters() if p.dim() == 4 and p.shape[-2:] != (1, 1) and p.shape[1] > 1}


def test_channels_last_is_the_default_and_gives_the_nchw_outputs_and_gradients():
    from fvcore.common.config import CfgNode

    from nasnet_det.models import add_nasnet_model_config

    name, kwargs = MODELS["mobile"]
    torch.manual_seed(0)
    nhwc = with_random_bn_statistics(create_model(name, **kwargs))
    nchw = create_model(name, channels_last=False, **kwargs)
    nchw.load_state_dict(nhwc.state_dict())
    nchw.eval()
    assert _layouts(nhwc) == {True} and _layouts(nchw) == {False}
    x, target = torch.randn(2, 3, 61, 61), torch.tensor([1, 7])
    with torch.no_grad():
        a, b = nhwc(x), nchw(x)
        maps = nhwc.forward_features(x, ["conv0", "cell_0"]), nchw.forward_features(x, ["conv0", "cell_0"])
    for name in ("conv0", "cell_0"):  # the feature maps a detector gets are in the network's layout
        assert maps[0][name].is_contiguous(memory_format=torch.channels_last) and not maps[0][name].is_contiguous()
        assert maps[1][name].is_contiguous()
    assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())
    for model in (nhwc, nchw):
        model.train()
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout mask
        F.cross_entropy(model(x), target).backward()
    grads = dict(nchw.named_parameters())
    for n, p in nhwc.named_parameters():
        ref = grads[n].grad
        if ref is None:  # the aux head, unused here
            assert p.grad is None, n
            continue
        assert (p.grad - ref).abs().max().item() <= 1e-3 * max(1e-3, ref.abs().max().item()), n
    # Loading weights keeps the layout; the fused copy follows the model, or the layout asked for.
    nhwc.load_state_dict(nchw.state_dict())
    assert _layouts(nhwc) == {True}
    assert _layouts(nhwc.fuse_for_inference()) == {True}
    assert _layouts(nhwc.fuse_for_inference(channels_last=False)) == {False}
    assert _layouts(nhwc.set_channels_last(False)) == {False} and not nhwc.channels_last
    # The config switch.
    cfg = add_nasnet_model_config(CfgNode(), "search_child_tiny")
    assert _layouts(create_model(cfg, dataset="cifar", num_classes=10)) == {True}
    cfg.MODEL.NASNET.CHANNELS_LAST = False
    assert _layouts(create_model(cfg, dataset="cifar", num_classes=10)) == {False}


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_fast_path_gives_the_same_logits():
    name, kwargs = MODELS["mobile"]
    torch.manual_seed(0)
    model = with_random_bn_statistics(create_model(name, **{**kwargs, "num_cells": 1}))
    compiled = model.fuse_for_inference(compile=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected, got = model(x), compiled(x)
    assert expected.abs().max() > 1e-2
    assert (expected - got).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())
    assert compiled.is_fused
