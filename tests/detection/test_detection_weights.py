"""ImageNet NASNet weights -> detector: every backbone/head key matched, values in place, mismatches rejected."""


import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from helpers.detection import CONFIGS, tiny_cfg

import nasnet_det.detection  # noqa: F401
from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
from nasnet_det.detection.config import get_nasnet_cfg
from nasnet_det.detection.train import build_nasnet_detector
from nasnet_det.detection.weights import load_pretrained_nasnet, to_detector_state_dict
from nasnet_det.models import create_model
from nasnet_det.models.pretrained import save_checkpoint


def pretrained_checkpoint(tmp_path, **overrides):
    kwargs = dict(num_cells=2, filters=4, stem_filters=8, num_classes=1000, image_size=64)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = create_model("nasnet_a_mobile", dropout=0.0, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so that a silent skip would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model, save_checkpoint(model, tmp_path / "imagenet.pth")


@pytest.mark.parametrize("layout,norm", [("c4", "FrozenBN"), ("fpn", "BN")])
def test_our_checkpoint_loads_every_backbone_key(tmp_path, layout, norm):
    source, path = pretrained_checkpoint(tmp_path)
    cfg = tiny_cfg(layout, NUM_CELLS=2, NORM=norm)
    cfg.MODEL.NASNET.WEIGHTS = str(path)
    model = build_nasnet_detector(cfg)
    report = load_pretrained_nasnet(model, path)  # loading again gives the report to inspect
    assert report.all_matched, str(report)
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert set(report.ignored) == {"last_linear.weight", "last_linear.bias"} | {
        k for k in source.state_dict() if k.startswith("aux_head.") and not k.endswith("num_batches_tracked")}
    sd = model.state_dict()
    prefix = "backbone.nasnet." if layout == "c4" else "backbone.bottom_up.nasnet."
    last = "roi_heads.res5.nasnet." if layout == "c4" else prefix
    for key in ("conv0.conv.weight", "cell_stem_0.conv_1x1.bn.running_mean", "cell_3.conv_1x1.conv.weight",
                "cell_5.comb_iter_0_left.separable_1.depthwise_conv2d.weight"):
        where = last if key.startswith("cell_5") else prefix
        assert torch.equal(sd[where + key], source.state_dict()[key]), key
    nasnet_keys = {k for k in sd if ".nasnet." in k and not k.endswith("num_batches_tracked")}
    assert nasnet_keys == set(report.matched)


def test_detector_state_dict_loads_through_detection_checkpointer(tmp_path):
    source, _ = pretrained_checkpoint(tmp_path)
    model = build_model(tiny_cfg("c4", NUM_CELLS=2, NORM="FrozenBN"))
    converted = to_detector_state_dict(model, source.state_dict(), arch=source.arch)
    torch.save({"model": converted}, tmp_path / "d2.pth")
    DetectionCheckpointer(model).load(str(tmp_path / "d2.pth"))
    key = "roi_heads.res5.nasnet.reduction_cell_1.conv_1x1.conv.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key.removeprefix("roi_heads.res5.nasnet.")])


def test_genotype_and_size_mismatch_are_rejected(tmp_path):
    from nasnet_det.genotypes import NASNET_A
    from nasnet_det.space import Genotype

    other = Genotype(NASNET_A.normal, NASNET_A.normal, name="other")  # normal cell used as reduction cell
    # f=8: with f=4 this genotype gives a 1-channel FactorizedReduce in cell_stem_0 (a zero-width half)
    model_other = create_model("nasnet_a_mobile", genotype=other, num_cells=2, filters=8, stem_filters=8)
    path = save_checkpoint(model_other, tmp_path / "other.pth")
    cfg = tiny_cfg("c4", NUM_CELLS=2, NORM="FrozenBN")
    cfg.MODEL.NASNET.WEIGHTS = str(path)
    with pytest.raises(ValueError, match="genotype: checkpoint 'other'"):
        build_nasnet_detector(cfg)
    _, path = pretrained_checkpoint(tmp_path, num_cells=3)
    cfg.MODEL.NASNET.WEIGHTS = str(path)
    with pytest.raises(ValueError, match="num_cells: checkpoint 3 vs config 2"):
        build_nasnet_detector(cfg)
    _, path = pretrained_checkpoint(tmp_path, pad_mode="timm")  # same tensors, other outputs
    cfg.MODEL.NASNET.WEIGHTS = str(path)
    with pytest.raises(ValueError, match=r"pad_mode: checkpoint timm vs config tf \(MODEL.NASNET.PAD_MODE\)"):
        build_nasnet_detector(cfg)
    cfg.MODEL.NASNET.WEIGHTS = str(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        build_nasnet_detector(cfg)


def test_our_checkpoint_is_read_once_and_validated(tmp_path, monkeypatch):
    _, path = pretrained_checkpoint(tmp_path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    load_pretrained_nasnet(build_model(tiny_cfg("fpn", NUM_CELLS=2, NORM="FrozenBN")), path)
    assert calls == [path]
    monkeypatch.undo()
    payload = torch.load(path, weights_only=False)
    del payload["arch"]
    torch.save(payload, tmp_path / "no_arch.pth")
    with pytest.raises(ValueError, match="no_arch.pth is a nasnet-det checkpoint without a valid 'arch' entry"):
        load_pretrained_nasnet(build_model(tiny_cfg("fpn", NUM_CELLS=2, NORM="FrozenBN")), tmp_path / "no_arch.pth")


@pytest.mark.parametrize("layout", ["c4", "fpn"])
def test_detector_checkpoint_of_another_nasnet_is_rejected(tmp_path, layout):
    """MODEL.WEIGHTS of another N@F / genotype must not half-load silently (the stock checkpointer only logs)."""
    trained = build_model(tiny_cfg(layout, NUM_CELLS=2, NORM="FrozenBN"))
    torch.save({"model": trained.state_dict()}, tmp_path / "det.pth")
    cfg = tiny_cfg(layout, NUM_CELLS=2, NORM="FrozenBN")
    cfg.MODEL.NASNET.FILTERS = 8
    with pytest.raises(ValueError, match=r"(?s)another NASNet.*have another shape.*MODEL.NASNET.FILTERS") as err:
        NASNetDetectionCheckpointer(build_model(cfg)).load(str(tmp_path / "det.pth"))
    assert "missing from the checkpoint" not in str(err.value)  # same names, other shapes: nothing is missing
    # Same N@F (f=8: see test_genotype_and_size_mismatch_are_rejected), other cells: other tensor names.
    from nasnet_det.genotypes import NASNET_A
    from nasnet_det.space import Genotype

    Genotype(NASNET_A.normal, NASNET_A.normal, name="other").save(tmp_path / "other.json")
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "det8.pth")
    cfg.MODEL.NASNET.GENOTYPE = str(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"(?s)NASNet tensors of the model are missing.*MODEL.NASNET.GENOTYPE"):
        NASNetDetectionCheckpointer(build_model(cfg)).load(str(tmp_path / "det8.pth"))


def test_detector_checkpoint_with_other_classes_still_loads(tmp_path):
    """Only NASNet tensors are strict: a new box predictor (another class count) is detectron2's usual warning."""
    trained = build_model(tiny_cfg("c4", NUM_CELLS=2, NORM="FrozenBN"))
    torch.save({"model": trained.state_dict()}, tmp_path / "det.pth")
    cfg = tiny_cfg("c4", NUM_CELLS=2, NORM="BN")  # BN has num_batches_tracked, FrozenBN not: no architecture change
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = build_model(cfg)
    NASNetDetectionCheckpointer(model).load(str(tmp_path / "det.pth"))
    key = "roi_heads.res5.nasnet.cell_5.conv_1x1.conv.weight"
    assert torch.equal(model.state_dict()[key], trained.state_dict()[key])


def test_pretrainedmodels_mobile_into_mobile_c4_detector(tmp_path):
    pytest.importorskip("pretrainedmodels")
    from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

    torch.manual_seed(0)
    cadene = NASNetAMobile(num_classes=1000)
    torch.save(cadene.state_dict(), tmp_path / "nasnetamobile.pth")
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / "faster_rcnn_nasnet_a_mobile_c4_600.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    report = load_pretrained_nasnet(model, tmp_path / "nasnetamobile.pth")
    assert report.all_matched, str(report)
    assert set(report.ignored) == {"last_linear.weight", "last_linear.bias"}
    # Cadene's cell_15 (stack 3, 4th cell) is our cell_11 in the ROI head.
    ours = model.state_dict()["roi_heads.res5.nasnet.cell_11.conv_1x1.conv.weight"]
    assert torch.equal(ours, cadene.state_dict()["cell_15.conv_1x1.conv.weight"])
