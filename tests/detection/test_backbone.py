"""NASNet backbones in detectron2: registration, output shapes at odd sizes, C4 head, norm/freeze, config errors."""

import logging

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, build_backbone, build_model
from detectron2.structures import ImageList
from helpers.detection import CONFIGS, tiny_cfg

import nasnet_det.detection  # noqa: F401  (registers)
from nasnet_det.detection.config import get_nasnet_cfg


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
    assert backbone.size_divisibility == (16 if layout == "c4" else 32)  # the largest NASNet output stride
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
    (dict(OUT_FEATURES=["stride64"]), "unknown feature 'stride64'"),
    (dict(NORM="GN"), "MODEL.NASNET.NORM must be one of"),
    (dict(FREEZE_AT=7), "FREEZE_AT must be in 0..5"),
])
def test_config_errors_are_clear(change, message):
    cfg = tiny_cfg("fpn", **change)
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg)


def test_penultimate_filters_that_do_not_fit_the_cell_round_to_the_nearest_valid_value(caplog):
    # NASNet-A concatenates 6 outputs: F must be a multiple of 24; any searched cell must still build.
    cfg = tiny_cfg("c4", FILTERS=0, PENULTIMATE_FILTERS=100)
    with caplog.at_level(logging.INFO, logger="nasnet_det.models.nasnet"):
        nasnet = build_backbone(cfg).nasnet
    assert nasnet.filters == 4  # F = 96, the nearest multiple of 24
    assert "F=100 is not a multiple of 24: using f=4 (F=96)" in caplog.text


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


SHARED_BASE = "Base-NASNet-FasterRCNN.yaml"  # settings only; names no backbone (the layouts' bases do)


def test_shared_base_config_parses():
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / SHARED_BASE))
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == [127.5] * 3


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name != SHARED_BASE),
                         ids=lambda p: p.name)
def test_every_config_builds_and_detects(path, one_torch_thread):
    """Each shipped config (network shrunk to 2@f=4) builds a NASNet detector that runs inference."""
    from nasnet_det.detection.weights import nasnet_parts

    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == [127.5] * 3
    n = cfg.MODEL.NASNET
    n.NUM_CELLS, n.PENULTIMATE_FILTERS, n.FILTERS, n.STEM_FILTERS = 2, 0, 4, 8
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64  # the FPN box head's 1024-wide FCs are most of the build time
    model = build_model(cfg).eval()
    assert nasnet_parts(model)
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8), "height": 40, "width": 56}])
    boxes = out[0]["instances"].pred_boxes.tensor
    assert boxes.shape[1] == 4 and torch.isfinite(boxes).all()


def test_configs_cover_both_layouts():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"faster_rcnn_nasnet_a_large_c4_800.yaml", "faster_rcnn_nasnet_a_mobile_fpn_600.yaml"} <= names


@pytest.mark.parametrize("out_features", [["stride4", "stride8", "stride16"],
                                          ["stride4", "stride8", "stride16", "stride32"]])
def test_fpn_taps_ending_at_stride_16(out_features, one_torch_thread):
    """FPN over strides 4-16 pads to a multiple of the NASNet's largest output stride, not only FPN's own 16."""
    cfg = tiny_cfg("fpn", OUT_FEATURES=out_features)
    cfg.MODEL.FPN.IN_FEATURES = ["stride4", "stride8", "stride16"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4"]
    model = build_model(cfg).eval()
    assert model.backbone.size_divisibility == max(int(f[6:]) for f in out_features)
    with torch.no_grad():  # 100x70 is a multiple of neither 16 nor 32
        out = model([{"image": torch.randint(0, 255, (3, 100, 70), dtype=torch.uint8), "height": 100, "width": 70}])
    assert torch.isfinite(out[0]["instances"].pred_boxes.tensor).all()


def test_c4_pads_to_16_not_32():
    cfg = tiny_cfg("c4")
    backbone = build_backbone(cfg)
    images = ImageList.from_tensors([torch.zeros(3, 1200, 1808)], backbone.size_divisibility)
    assert images.tensor.shape[-2:] == (1200, 1808)  # 32 would pad to 1216 x 1824
    with pytest.raises(ValueError, match="not a multiple of 16"):
        backbone(torch.zeros(1, 3, 40, 48))


@pytest.mark.parametrize("tap", ["conv0", "stride2"])
def test_fpn_rejects_conv0_tap(tap):
    cfg = tiny_cfg("fpn", OUT_FEATURES=[tap, "stride4", "stride8", "stride16", "stride32"])
    cfg.MODEL.FPN.IN_FEATURES = [tap, "stride4", "stride8", "stride16", "stride32"]
    with pytest.raises(ValueError, match=rf"MODEL.FPN.IN_FEATURES \['{tap}'\] is the NASNet stem conv0"):
        build_backbone(cfg)


@pytest.mark.parametrize("skip", [False, True])
def test_c4_trunk_plus_head_equals_full_network(skip):
    """backbone "c4" -> ROI head's crop network on the whole map == the full NASNet's last cell + ReLU, in eval
    mode with random (non-trivial) BN statistics, for both SKIP_REDUCTION_LAYER_INPUT settings."""
    from nasnet_det.detection.weights import load_pretrained_nasnet
    from nasnet_det.models import create_model

    cfg = tiny_cfg("c4", NUM_CELLS=2, SKIP_REDUCTION_LAYER_INPUT=skip, NORM="FrozenBN")
    model = build_model(cfg).eval()
    full = create_model("nasnet_a_mobile", num_cells=2, filters=4, stem_filters=8, num_classes=0, aux_head=False,
                        dropout=0.0, skip_reduction_layer_input=skip).eval()
    with torch.no_grad():
        for m in full.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    assert load_pretrained_nasnet(model, full.state_dict()).all_matched
    x = torch.randn(1, 3, 64, 96)
    head = model.roi_heads.res5
    with torch.no_grad():
        c4 = model.backbone(x)["c4"]
        ours = head(c4)
        ref = full.act(full.forward_features(x, [full.plan[-1].name])[full.plan[-1].name])
        first, second = torch.split(c4, head.split_channels, dim=1)
        swapped = head(torch.cat([second, first], dim=1))
    assert ours.shape == ref.shape == (1, 24 * 4, 2, 3)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(swapped, ref, atol=1e-2)  # the split order matters, so the match above means something


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
