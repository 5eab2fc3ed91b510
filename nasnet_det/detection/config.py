"""Config keys for NASNet detectors (the detectron2 ``add_xxx_config`` pattern).

Call :func:`add_nasnet_config` on ``detectron2.config.get_cfg()`` before ``merge_from_file``: yacs rejects
keys it has never seen. :func:`get_nasnet_cfg` does both.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

NORMS = ("BN", "FrozenBN", "SyncBN")


def add_nasnet_config(cfg: CN) -> CN:
    """Add ``MODEL.NASNET.*`` and ``DATASETS.COCO_FILES`` with their defaults (NASNet-A mobile 4@1056)."""
    cfg.MODEL.NASNET = CN()
    n = cfg.MODEL.NASNET
    # A published cell ("nasnet_a") or a genotype JSON path (nasnet_det.genotypes.get_genotype).
    n.GENOTYPE = "nasnet_a"
    n.NUM_CELLS = 4  # N: normal cells per stack
    # Size the network by exactly one of F (channels of the last cell) or f (per-op filters of stack 1).
    n.PENULTIMATE_FILTERS = 1056
    n.FILTERS = 0
    n.STEM_FILTERS = 32  # conv0 output channels (slim: 32 mobile, 96 large)
    n.SKIP_REDUCTION_LAYER_INPUT = False  # True for NASNet-A large
    # Multi-scale taps for build_nasnet_backbone / build_nasnet_fpn_backbone: cell names ("cell_3",
    # "cell_stem_0", ...) or stride aliases "stride4" .. "stride32" (the last cell at that stride).
    # The C4 backbone ignores this: it always outputs "c4" (see backbone.py).
    n.OUT_FEATURES = ["stride4", "stride8", "stride16", "stride32"]
    # Freeze conv0 (1), + stride-4 cells (2), + stride-8 (3), + stride-16 (4), + stride-32 (5); 0 = train all.
    n.FREEZE_AT = 2
    n.NORM = "FrozenBN"  # one of NORMS
    # ScheduledDropPath in every NASNet cell (C4: trunk and second stage, as TF); 1.0 = off (TF detector: 0.7).
    n.DROP_PATH_KEEP_PROB = 1.0
    # "tf": TF-exact SAME padding, right for all released NASNet weights (slim, Cadene and timm's are TF's).
    # "timm": reproduces timm's outputs, whose stride-2 average pools count the zero padding in the mean.
    n.PAD_MODE = "tf"
    n.FUSE_BN_AT_INFERENCE = False  # eval mode runs a BN-folded copy of the NASNet: same outputs, faster (fuse.py)
    # ImageNet-pretrained NASNet: a nasnet-det checkpoint (.pth with arch + state_dict) or a timm /
    # pretrainedmodels state dict. Loaded after the detector is built; MODEL.WEIGHTS (a detectron2
    # checkpoint) is loaded afterwards and overrides it.
    n.WEIGHTS = ""

    # COCO-format datasets to register before training: "name=path/to/annotations.json:path/to/images".
    cfg.DATASETS.COCO_FILES = []
    return cfg


def get_nasnet_cfg() -> CN:
    """detectron2's default config plus the NASNet keys."""
    return add_nasnet_config(get_cfg())
