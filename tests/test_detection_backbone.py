"""NASNet backbones in detectron2: registration, output shapes at odd sizes, C4 head, norm/freeze, config errors."""

from pathlib import Path

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, build_backbone, build_model
from detectron2.structures import ImageList

import nasnet_det.detection  # noqa: F401  (registers)
from nasnet_det.detection.config import get_nasnet_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detection"


def tiny_cfg(layout: str, **nasnet):
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / f"smoke-nasnet-{layout}.yaml"))
    cfg.MODEL.NASNET.FILTERS = 4
    cfg.MODEL.NASNET.STEM_FILTERS = 8
    for k, v in nasnet.items():
        cfg.MODEL.NASNET[k] = v
    return cfg


def test_registered():
    for name in ("build_nasnet_backbone", "build_nasnet_fpn_backbone", "build_nasnet_c4_backbone"):
        assert name in BACKBONE_REGISTRY
    assert "NASNetROIHeads" in ROI_HEADS_REGISTRY


@pytest.mark.parametrize("layout,name", [("fpn", "build_nasnet_backbone"), ("fpn", "build_nasnet_fpn_backbone"),
                                         ("c4", "build_nasnet_c4_backbone")])
@pytest.mark.parametrize("hw", [(45, 61), (33, 97)])
def test_output_shape_matches_features_at_odd_sizes(layout, name, hw):
    cfg = tiny_cfg(layout)
    cfg.MODEL.BACKBONE.NAME = name
    backbone = build_backbone(cfg).eval()
    assert backbone.size_divisibility == 32
    images = ImageList.from_tensors([torch.randn(3, *hw)], backbone.size_divisibility)
    ph, pw = images.tensor.shape[-2:]
    with torch.no_grad():
        feats = backbone(images.tensor)
    shapes = backbone.output_shape()
    assert set(feats) == set(shapes)
    for k, spec in shapes.items():
        assert feats[k].shape[1] == spec.channels, k
        assert feats[k].shape[-2:] == (ph // spec.stride, pw // spec.stride), k


def test_stride_map_and_aliases():
    cfg = tiny_cfg("fpn", NUM_CELLS=2, OUT_FEATURES=["conv0", "stride4", "stride8", "cell_3", "stride32"])
    cfg.MODEL.BACKBONE.NAME = "build_nasnet_backbone"
    shapes = build_backbone(cfg).output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {"conv0": 2, "stride4": 4, "stride8": 8, "cell_3": 16,
                                                       "stride32": 32}
    f = 4  # NASNet-A cells output 6 f channels in stack 1, 12 f in stack 2, 24 f in stack 3
    assert shapes["stride8"].channels == 6 * f and shapes["cell_3"].channels == 12 * f
    assert shapes["stride32"].channels == 24 * f


def test_c4_split_matches_tf_layout():
    """RPN feature = concat(cell_{2N-2}, cell_{2N-1}); the head holds reduction_cell_1 + stack 3, the backbone
    the rest, and no NASNet module is in both."""
    cfg = tiny_cfg("c4", NUM_CELLS=2)
    model = build_model(cfg)
    assert model.backbone.head_inputs == ["cell_2", "cell_3"]
    assert model.backbone.output_shape()["c4"].channels == 2 * 12 * 4
    head = model.roi_heads.res5
    assert [p.name for p in head.plans] == ["reduction_cell_1", "cell_4", "cell_5"]
    assert head.out_channels == 24 * 4
    trunk = {k.split(".")[2] for k in model.state_dict() if k.startswith("backbone.nasnet.")}
    second = {k.split(".")[3] for k in model.state_dict() if k.startswith("roi_heads.res5.nasnet.")}
    assert second == {"reduction_cell_1", "cell_4", "cell_5"}
    assert not trunk & second and "conv0" in trunk and "cell_3" in trunk


def test_large_layout_head_reads_cell_10_and_11():
    cfg = tiny_cfg("c4", NUM_CELLS=6, SKIP_REDUCTION_LAYER_INPUT=True)
    model = build_model(cfg)
    assert model.backbone.head_inputs == ["cell_10", "cell_11"]


def test_freeze_at_and_norm():
    cfg = tiny_cfg("fpn", NORM="BN", FREEZE_AT=3)
    cfg.MODEL.BACKBONE.NAME = "build_nasnet_backbone"
    nasnet = build_backbone(cfg).nasnet
    for name in ("conv0", "cell_stem_0", "cell_stem_1", "cell_0"):  # strides 2, 4, 8, 8
        mod = getattr(nasnet, name)
        assert not any(p.requires_grad for p in mod.parameters()), name
        assert any(isinstance(m, FrozenBatchNorm2d) for m in mod.modules()), name
    for name in ("reduction_cell_0", "cell_1", "cell_2"):
        mod = getattr(nasnet, name)
        assert all(p.requires_grad for p in mod.parameters()), name
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in mod.modules()), name
    cfg.MODEL.NASNET.NORM, cfg.MODEL.NASNET.FREEZE_AT = "FrozenBN", 0
    nasnet = build_backbone(cfg).nasnet
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nasnet.modules())
    frozen = [m for m in nasnet.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 1e-3 for m in frozen)  # NASNet's BN eps survives the conversion
    cfg.MODEL.NASNET.NORM = "SyncBN"
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in build_backbone(cfg).modules())


@pytest.mark.parametrize("change,message", [
    (dict(GENOTYPE="no_such_cell"), "unknown genotype"),
    (dict(PENULTIMATE_FILTERS=1056), "exactly one of MODEL.NASNET.PENULTIMATE_FILTERS"),
    (dict(FILTERS=0, PENULTIMATE_FILTERS=100), "not a multiple of 24"),
    (dict(OUT_FEATURES=["stride64"]), "unknown feature 'stride64'"),
    (dict(NORM="GN"), "MODEL.NASNET.NORM must be one of"),
    (dict(FREEZE_AT=7), "FREEZE_AT must be in 0..5"),
])
def test_config_errors_are_clear(change, message):
    cfg = tiny_cfg("fpn", **change)
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg)


def test_genotype_json_path(tmp_path):
    from nasnet_det.genotypes import NASNET_A

    path = tmp_path / "cell.json"
    NASNET_A.save(path)
    cfg = tiny_cfg("c4", GENOTYPE=str(path), NUM_CELLS=2)
    assert build_backbone(cfg).output_shape()["c4"].channels == 2 * 12 * 4


def test_fpn_in_features_must_exist():
    cfg = tiny_cfg("fpn", OUT_FEATURES=["stride8", "stride16", "stride32"])
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(cfg)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_configs_parse(path):
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == [127.5] * 3


def test_mobile_config_builds_paper_sizes():
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / "faster_rcnn_nasnet_a_mobile_c4_600.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert model.backbone.output_shape()["c4"].channels == 2 * 528  # cell_6 + cell_7 of 4 @ 1056
    assert model.roi_heads.res5.out_channels == 1056
    n_nasnet = sum(p.numel() for n, p in model.named_parameters() if ".nasnet." in n)
    n_nasnet += sum(b.numel() for n, b in model.named_buffers() if ".nasnet." in n and "running" not in n
                    and "num_batches" not in n)
    assert n_nasnet == 5_289_978 - 1056 * 1000 - 1000  # the ImageNet model minus its classifier
