"""Importing timm's nasnetalarge and Cadene's nasnetamobile weights gives the same logits."""

from __future__ import annotations

import pytest
import torch

from nasnet_det.models import create_model
from nasnet_det.models.pretrained import load_checkpoint, load_external_weights, save_checkpoint


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    # Default BN statistics are an identity; random ones make the comparison meaningful.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_timm_nasnetalarge_logits_match():
    timm = pytest.importorskip("timm")
    peer = timm.create_model("nasnetalarge", pretrained=False).eval()
    _randomize_batchnorm(peer)
    ours = create_model("nasnet_a_large", pad_mode="timm").eval()
    report = load_external_weights(ours, peer.state_dict())
    assert not report.missing and not report.unexpected and not report.shape_mismatch, str(report)
    x = torch.randn(2, 3, 131, 131)
    with torch.no_grad():
        diff = (peer(x) - ours(x)).abs().max().item()
    assert diff < 1e-4


def test_cadene_nasnetamobile_logits_match_tf_padding(tmp_path):
    pytest.importorskip("pretrainedmodels")
    from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

    peer = NASNetAMobile(num_classes=1000).eval()
    _randomize_batchnorm(peer)
    ours = create_model("nasnet_a_mobile").eval()  # pad_mode="tf": Cadene reproduces TF's SAME padding
    report = load_external_weights(ours, peer.state_dict())
    assert len(report.matched) == len([k for k in peer.state_dict() if "num_batches" not in k])
    assert not report.missing, str(report)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = peer(x)
        assert (expected - ours(x)).abs().max().item() < 1e-4
    # The imported weights survive our own checkpoint format.
    rebuilt, _ = load_checkpoint(save_checkpoint(ours, tmp_path / "mobile.pth"))
    with torch.no_grad():
        assert (expected - rebuilt.eval()(x)).abs().max().item() < 1e-4


def test_class_count_mismatch_is_reported_not_fatal():
    pytest.importorskip("pretrainedmodels")
    from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

    ours = create_model("nasnet_a_mobile", num_classes=10)
    report = load_external_weights(ours, NASNetAMobile(num_classes=1000).state_dict())
    assert {k for k, _, _ in report.shape_mismatch} == {"last_linear.weight", "last_linear.bias"}
    assert "shape mismatch last_linear.weight: checkpoint (1000, 1056) vs model (10, 1056)" in str(report)
