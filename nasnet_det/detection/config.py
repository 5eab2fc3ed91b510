"""Config keys for NASNet detectors (the detectron2 ``add_xxx_config`` pattern).

Call :func:`add_nasnet_config` on ``detectron2.config.get_cfg()`` before merging a file: yacs rejects keys it
has never seen (:func:`get_nasnet_cfg` does that), then :func:`load_nasnet_cfg` to merge a file and overrides
(it applies a ``MODEL.NASNET.PRESET`` they name before their explicit keys).
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from nasnet_det.models.config import NODE, PRESETS, add_nasnet_model_config, prepare_nasnet_config

NORMS = ("BN", "FrozenBN", "SyncBN")
# The network keys as classification named them before MODEL.NASNET (MODEL.GENOTYPE, ...; not MODEL.WEIGHTS,
# which is detectron2's): an error naming the MODEL.NASNET key, not "Non-existent config key".
RENAMED_KEYS = {f"MODEL.{key}": f"{NODE}.{key}" for key in PRESETS["nasnet_a_mobile"].values}


def add_nasnet_config(cfg: CN) -> CN:
    """Add ``MODEL.NASNET`` (:func:`nasnet_det.models.config.add_nasnet_model_config`, default preset
    ``nasnet_a_mobile``) plus the detection keys ``MODEL.NASNET.OUT_FEATURES / FREEZE_AT / NORM`` and
    ``DATASETS.COCO_FILES``. ``MODEL.NASNET.WEIGHTS`` is the ImageNet-pretrained NASNet (a nasnet-det
    checkpoint or a timm / pretrainedmodels state dict), loaded after the detector is built; ``MODEL.WEIGHTS``
    (a detectron2 checkpoint) is loaded afterwards and overrides it. The backbone has no classifier, so
    ``AUX_HEAD`` and ``DROPOUT`` are unused; ``DROP_PATH_KEEP_PROB`` applies to every NASNet cell (C4: trunk
    and second stage, as TF)."""
    add_nasnet_model_config(cfg, "nasnet_a_mobile")
    n = cfg.MODEL.NASNET
    # Multi-scale taps for build_nasnet_backbone / build_nasnet_fpn_backbone: cell names ("cell_3",
    # "cell_stem_0", ...) or stride aliases "stride4" .. "stride32" (the last cell at that stride).
    # The C4 backbone ignores this: it always outputs "c4" (see backbone.py).
    n.OUT_FEATURES = ["stride4", "stride8", "stride16", "stride32"]
    # Freeze conv0 (1), + stride-4 cells (2), + stride-8 (3), + stride-16 (4), + stride-32 (5); 0 = train all.
    n.FREEZE_AT = 2
    n.NORM = "FrozenBN"  # one of NORMS
    n.FUSE_BN_AT_INFERENCE = False  # eval mode runs a BN-folded copy of the NASNet: same outputs, faster (fuse.py)

    # COCO-format datasets to register before training: "name=path/to/annotations.json:path/to/images".
    cfg.DATASETS.COCO_FILES = []
    return cfg


def load_nasnet_cfg(cfg: CN, config_file: str | None = None, opts: list | None = None) -> CN:
    """Merge ``config_file`` and ``KEY VALUE`` ``opts`` into ``cfg`` (from :func:`get_nasnet_cfg`), applying a
    ``MODEL.NASNET.PRESET`` they name first so that their explicit keys win over it."""
    opts = [*(opts or []), *prepare_nasnet_config(cfg, config_file, opts, RENAMED_KEYS)]
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        try:  # yacs asserts: an unknown key or an odd count is bad input (KeyError), not a crash
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            raise KeyError(f"bad override: {e.args[0] if e.args else e}") from None
    return cfg


def get_nasnet_cfg() -> CN:
    """detectron2's default config plus the NASNet keys."""
    return add_nasnet_config(get_cfg())
