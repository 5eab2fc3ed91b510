"""The tiny detector config shared by the tests/detection/ files."""

from __future__ import annotations

from pathlib import Path

from detectron2.config import CfgNode

from nasnet_det.detection.config import get_nasnet_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"


def tiny_cfg(layout: str = "c4", *, demo_weights: Path | str | None = None, **nasnet: object) -> CfgNode:
    """``configs/detection/smoke-nasnet-{layout}.yaml`` shrunk to f=4 with an 8-filter stem; ``nasnet`` sets
    further ``MODEL.NASNET`` keys (``NUM_CELLS=2``, ``NORM="FrozenBN"``, ...). ``demo_weights`` (the demo's
    tests) also sets ``MODEL.WEIGHTS``, drops the datasets and shrinks the test input to 32-64 px."""
    cfg = get_nasnet_cfg()
    cfg.merge_from_file(str(CONFIGS / f"smoke-nasnet-{layout}.yaml"))
    cfg.MODEL.NASNET.FILTERS = 4
    cfg.MODEL.NASNET.STEM_FILTERS = 8
    for k, v in nasnet.items():
        cfg.MODEL.NASNET[k] = v
    if demo_weights is not None:
        cfg.DATASETS.COCO_FILES, cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = [], (), ()
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 32, 64
        cfg.MODEL.WEIGHTS = str(demo_weights)
    return cfg
