"""NASNet backbones registered in detectron2's ``BACKBONE_REGISTRY``.

- ``build_nasnet_backbone``: multi-scale taps (``MODEL.NASNET.OUT_FEATURES``) of one NASNet.
- ``build_nasnet_fpn_backbone``: detectron2's ``FPN`` + ``LastLevelMaxPool`` over those taps (P2-P6).
- ``build_nasnet_c4_backbone``: the paper's single-scale detector (TF ``faster_rcnn_nas``): the trunk up to
  the last stride-16 cell; its output ``"c4"`` is the channel concat of the stride-16 cells that the second
  stage reads (cell_{2N-2}, cell_{2N-1}). The rest of the network (reduction_cell_1 + stack 3) runs on ROI
  crops in :class:`nasnet_det.detection.heads.NASNetROIHeads`.

Each part keeps an embedded :class:`NASNet` (``.nasnet``) with the cells it does not run deleted, so that
every NASNet parameter lives exactly once in the detector under its original name (see weights.py).
"""

from __future__ import annotations

import logging

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn

from nasnet_det.detection.config import NORMS
from nasnet_det.models import create_model
from nasnet_det.models.fuse import FusedForEval
from nasnet_det.models.nasnet import CellPlan, NASNet
from nasnet_det.space import Genotype

logger = logging.getLogger(__name__)

HEAD_START = "reduction_cell_1"  # first module of the C4 second stage


def detector_nasnet(cfg, genotype: Genotype | None = None) -> NASNet:
    """The full NASNet of ``cfg.MODEL.NASNET`` as a feature extractor (no classifier, no aux head);
    ``genotype`` replaces ``MODEL.NASNET.GENOTYPE`` (e.g. a search child's cells, timed for latency)."""
    extra = {} if genotype is None else {"genotype": genotype}
    return create_model(cfg, dataset="imagenet", num_classes=0, in_chans=len(cfg.MODEL.PIXEL_MEAN), **extra)


def resolve_feature(nasnet: NASNet, name: str) -> str:
    """The NASNet output behind an OUT_FEATURES entry: a cell name, or ``strideS`` = last cell at stride S."""
    known = [f.name for f in nasnet.feature_info]
    if name in known:
        return name
    if name.startswith("stride") and name[6:].isdigit():
        at_stride = [f.name for f in nasnet.feature_info if f.stride == int(name[6:])]
        if at_stride:
            return at_stride[-1]
    strides = sorted({f.stride for f in nasnet.feature_info})
    raise ValueError(f"MODEL.NASNET.OUT_FEATURES: unknown feature {name!r}; use a cell name "
                     f"({', '.join(known)}) or one of {', '.join(f'stride{s}' for s in strides)}")


def _plan_index(nasnet: NASNet, name: str) -> int:
    return -1 if name == "conv0" else next(p.index for p in nasnet.plan if p.name == name)


def module_strides(nasnet: NASNet) -> dict[str, int]:
    return {f.name: f.stride for f in nasnet.feature_info}


def drop_modules(nasnet: NASNet, names: list[str]) -> None:
    """Delete parts this detector component does not run (they live in the other component)."""
    for n in names:
        if hasattr(nasnet, n):
            delattr(nasnet, n)


def apply_norm_and_freeze(nasnet: NASNet, norm: str, freeze_at: int) -> None:
    """Freeze modules at stride <= 2**freeze_at (requires_grad False + FrozenBN), then convert the rest
    of the BN layers as ``norm`` says. Conversions keep NASNet's BN eps (1e-3)."""
    if norm not in NORMS:
        raise ValueError(f"MODEL.NASNET.NORM must be one of {NORMS}, got {norm!r}")
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"MODEL.NASNET.FREEZE_AT must be in 0..5 (0 = train everything), got {freeze_at}")
    for name, stride in module_strides(nasnet).items():
        module = getattr(nasnet, name, None)
        if module is None or stride.bit_length() - 1 > freeze_at:
            continue
        for p in module.parameters():
            p.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "FrozenBN":
        FrozenBatchNorm2d.convert_frozen_batchnorm(nasnet)
    elif norm == "SyncBN":
        nn.SyncBatchNorm.convert_sync_batchnorm(nasnet)


def set_drop_path_progress(model: nn.Module, progress: float) -> None:
    """ScheduledDropPath for every (possibly split) NASNet inside ``model``."""
    for m in model.modules():
        if isinstance(m, NASNet):
            m.set_drop_path_progress(progress)


class FusedAtInference:
    """Mixin for a module holding ``self.nasnet``: with ``fuse_bn_at_inference`` set
    (MODEL.NASNET.FUSE_BN_AT_INFERENCE), eval mode runs a BN-folded copy of it (same outputs, faster)."""

    fuse_bn_at_inference: bool = False

    def nasnet_for_forward(self) -> NASNet:
        if self.training or not self.fuse_bn_at_inference:
            return self.nasnet
        if "_fused_for_eval" not in self.__dict__:
            self.__dict__["_fused_for_eval"] = FusedForEval()
        return self.__dict__["_fused_for_eval"].get(self.nasnet)


def _check_divisible(x: torch.Tensor, divisor: int) -> None:
    h, w = x.shape[-2:]
    if h % divisor or w % divisor:
        raise ValueError(f"NASNet backbone input {h}x{w} is not a multiple of {divisor}; pad it "
                         "(GeneralizedRCNN does this via backbone.size_divisibility / ImageList.from_tensors)")


class NASNetBackbone(FusedAtInference, Backbone):
    """Outputs of chosen NASNet cells. ``out_features`` entries are cell names or ``strideS`` aliases."""

    def __init__(self, nasnet: NASNet, out_features: list[str]):
        super().__init__()
        if not out_features:
            raise ValueError("MODEL.NASNET.OUT_FEATURES is empty")
        self.cells = {name: resolve_feature(nasnet, name) for name in out_features}
        deepest = max(_plan_index(nasnet, c) for c in self.cells.values())
        drop_modules(nasnet, [p.name for p in nasnet.plan if p.index > deepest])
        self.nasnet = nasnet
        info = {f.name: f for f in nasnet.feature_info}
        self.shapes = {n: ShapeSpec(channels=info[c].channels, stride=info[c].stride) for n, c in self.cells.items()}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self.shapes)

    def cell_of(self, feature: str) -> str:
        """The NASNet output behind output ``feature`` (e.g. ``"stride8"`` -> ``"cell_3"``)."""
        return self.cells[feature]

    @property
    def size_divisibility(self) -> int:
        # Padding to a multiple of the largest output stride S makes every stride-s cell map exactly H/s (the
        # cells use TF-SAME padding), so FPN's 2x upsampling lines up. Not 32 when the taps stop earlier.
        # (conv0, a VALID 3x3/2 conv, gives H/2 - 1 whatever the padding; see build_nasnet_fpn_backbone.)
        return max(shape.stride for shape in self.shapes.values())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_divisible(x, self.size_divisibility)
        feats = self.nasnet_for_forward().forward_features(x, list(dict.fromkeys(self.cells.values())))
        return {n: feats[c] for n, c in self.cells.items()}


def c4_split(nasnet: NASNet) -> tuple[list[CellPlan], list[CellPlan], list[str]]:
    """(trunk plans, head plans, trunk outputs the head reads, in plan order) for the C4 split."""
    names = [p.name for p in nasnet.plan]
    if HEAD_START not in names:
        raise ValueError(f"this NASNet has no {HEAD_START}; the C4 detector needs the ImageNet layout")
    start = names.index(HEAD_START)
    trunk, head = list(nasnet.plan[:start]), list(nasnet.plan[start:])
    produced = {p.name for p in head}
    needed = {src for p in head for src in (p.h, p.h_prev) if src is not None and src not in produced}
    order = ["conv0"] + [p.name for p in trunk]
    return trunk, head, [n for n in order if n in needed]


class NASNetC4Backbone(FusedAtInference, Backbone):
    """The trunk up to the last stride-16 cell. Output ``"c4"``: concat of the cells the head reads
    (TF: concat(Cell_10, Cell_11) for NASNet-A large), the RPN and ROI-crop feature."""

    def __init__(self, nasnet: NASNet):
        super().__init__()
        trunk, head, inputs = c4_split(nasnet)
        drop_modules(nasnet, [p.name for p in head])
        self.nasnet = nasnet
        self.head_inputs = inputs
        info = {f.name: f for f in nasnet.feature_info}
        strides = {info[n].stride for n in inputs}
        if len(strides) != 1:
            raise ValueError(f"the C4 head reads {inputs} at different strides {sorted(strides)}; cannot concat")
        self.shape = ShapeSpec(channels=sum(info[n].channels for n in inputs), stride=strides.pop())

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"c4": self.shape}

    @property
    def size_divisibility(self) -> int:
        # The trunk stops at stride 16 (the stride-32 head runs on ROI crops), so 16 is enough; 32 would pad
        # e.g. 1200 px inputs to 1216 for nothing.
        return self.shape.stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_divisible(x, self.size_divisibility)
        feats = self.nasnet_for_forward().forward_features(x, self.head_inputs)
        return {"c4": torch.cat([feats[n] for n in self.head_inputs], dim=1)}


def _finish(holder: FusedAtInference, cfg) -> None:
    apply_norm_and_freeze(holder.nasnet, cfg.MODEL.NASNET.NORM, cfg.MODEL.NASNET.FREEZE_AT)
    holder.fuse_bn_at_inference = bool(cfg.MODEL.NASNET.FUSE_BN_AT_INFERENCE)


def _check_input_channels(cfg, input_shape: ShapeSpec | None) -> None:
    if input_shape is not None and input_shape.channels not in (None, len(cfg.MODEL.PIXEL_MEAN)):
        raise ValueError(f"input has {input_shape.channels} channels but MODEL.PIXEL_MEAN has "
                         f"{len(cfg.MODEL.PIXEL_MEAN)} entries")


@BACKBONE_REGISTRY.register()
def build_nasnet_backbone(cfg, input_shape: ShapeSpec | None = None, *,
                          genotype: Genotype | None = None) -> NASNetBackbone:
    _check_input_channels(cfg, input_shape)
    backbone = NASNetBackbone(detector_nasnet(cfg, genotype), list(cfg.MODEL.NASNET.OUT_FEATURES))
    _finish(backbone, cfg)
    return backbone


class NASNetFPN(FPN):
    """detectron2's FPN, padding its input to what its bottom-up needs too: FPN pads to the stride of its
    last input only, and the NASNet also needs its own (possibly larger) taps to divide."""

    @property
    def size_divisibility(self) -> int:
        return max(super().size_divisibility, self.bottom_up.size_divisibility)


@BACKBONE_REGISTRY.register()
def build_nasnet_fpn_backbone(cfg, input_shape: ShapeSpec | None = None, *,
                              genotype: Genotype | None = None) -> NASNetFPN:
    bottom_up = build_nasnet_backbone(cfg, input_shape, genotype=genotype)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {missing} are not produced by the NASNet backbone; "
                         f"MODEL.NASNET.OUT_FEATURES gives {list(bottom_up.output_shape())}")
    # conv0 is a VALID 3x3/2 conv: its map is H/2 - 1, not H/2, so FPN's 2x upsampling of the stride-4 level
    # cannot be added to it. (conv0 stays usable as a plain build_nasnet_backbone output.)
    stem = [f for f in in_features if bottom_up.cell_of(f) == "conv0"]
    if stem:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {stem} is the NASNet stem conv0 (stride 2, a VALID conv giving "
                         "H/2 - 1 rows), which FPN cannot merge; start the FPN at stride4 (cell_stem_0)")
    # The extra max-pooled level comes from the last FPN level, "p5" only when the taps reach stride 32.
    top_block = LastLevelMaxPool()
    top_block.in_feature = f"p{bottom_up.output_shape()[in_features[-1]].stride.bit_length() - 1}"
    return NASNetFPN(bottom_up=bottom_up, in_features=in_features, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
                     norm=cfg.MODEL.FPN.NORM, top_block=top_block, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_nasnet_c4_backbone(cfg, input_shape: ShapeSpec | None = None, *,
                             genotype: Genotype | None = None) -> NASNetC4Backbone:
    _check_input_channels(cfg, input_shape)
    backbone = NASNetC4Backbone(detector_nasnet(cfg, genotype))
    _finish(backbone, cfg)
    return backbone
