"""NASNet backbones for detectron2 Faster R-CNN. Importing this package registers
``build_nasnet_backbone``, ``build_nasnet_fpn_backbone``, ``build_nasnet_c4_backbone`` (BACKBONE_REGISTRY)
and ``NASNetROIHeads`` (ROI_HEADS_REGISTRY). ``NASNetDetectionCheckpointer`` loads detector checkpoints
(``MODEL.WEIGHTS``) and refuses those of another NASNet."""

from nasnet_det.detection.backbone import (
    NASNetBackbone,
    NASNetC4Backbone,
    build_nasnet_backbone,
    build_nasnet_c4_backbone,
    build_nasnet_fpn_backbone,
    set_drop_path_progress,
)
from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
from nasnet_det.detection.config import add_nasnet_config, get_nasnet_cfg
from nasnet_det.detection.heads import NASNetCropHead, NASNetROIHeads

__all__ = [
    "NASNetBackbone", "NASNetC4Backbone", "NASNetCropHead", "NASNetDetectionCheckpointer", "NASNetROIHeads",
    "add_nasnet_config",
    "build_nasnet_backbone", "build_nasnet_c4_backbone", "build_nasnet_fpn_backbone", "get_nasnet_cfg",
    "set_drop_path_progress",
]
