"""The NASNet second stage as a detectron2 C4 ROI head (TF ``faster_rcnn_nas``).

ROI crops of the backbone's ``"c4"`` feature are split back into the stride-16 cells they were concatenated
from, then reduction_cell_1 and the stack-3 cells run on them, followed by NASNet's final ReLU. The box
predictor sees the spatial mean of the result (``Res5ROIHeads``).
"""

from __future__ import annotations

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from nasnet_det.detection.backbone import (
    FusedAtInference,
    apply_norm_and_freeze,
    c4_split,
    detector_nasnet,
    drop_modules,
)
from nasnet_det.models.nasnet import NASNet


class NASNetCropHead(FusedAtInference, nn.Module):
    """reduction_cell_1 + stack 3 of ``nasnet`` applied to pooled ``(R, C, S, S)`` crops of ``"c4"``."""

    def __init__(self, nasnet: NASNet):
        super().__init__()
        trunk, head, inputs = c4_split(nasnet)
        drop_modules(nasnet, ["conv0"] + [p.name for p in trunk])
        self.nasnet = nasnet
        self.plans = tuple(head)
        self.inputs = inputs
        info = {f.name: f for f in nasnet.feature_info}
        self.split_channels = [info[n].channels for n in inputs]
        self.in_channels = sum(self.split_channels)
        self.out_channels = nasnet.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"NASNet ROI head expects {self.in_channels} channels "
                             f"({' + '.join(map(str, self.split_channels))} from {self.inputs}), got {x.shape[1]}")
        nasnet = self.nasnet_for_forward()
        x = nasnet.to_layout(x)  # ROIAlign gives NCHW crops
        outputs = dict(zip(self.inputs, torch.split(x, self.split_channels, dim=1)))
        outputs = nasnet.run_cells(outputs, self.plans, keep=set())
        return nasnet.act(outputs[self.plans[-1].name])


def build_nasnet_crop_head(cfg) -> NASNetCropHead:
    head = NASNetCropHead(detector_nasnet(cfg))
    apply_norm_and_freeze(head.nasnet, cfg.MODEL.NASNET.NORM, cfg.MODEL.NASNET.FREEZE_AT)
    head.fuse_bn_at_inference = bool(cfg.MODEL.NASNET.FUSE_BN_AT_INFERENCE)
    return head


@ROI_HEADS_REGISTRY.register()
class NASNetROIHeads(Res5ROIHeads):
    """``Res5ROIHeads`` whose per-region network (``self.res5``) is the NASNet second stage."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
            raise ValueError("NASNetROIHeads supports boxes only: set MODEL.MASK_ON and MODEL.KEYPOINT_ON False")
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES must name the one C4 backbone output "
                             f"({list(input_shape)}), got {list(in_features)}")
        ret = super().from_config(cfg, input_shape)
        channels = input_shape[in_features[0]].channels
        if ret["res5"].in_channels != channels:
            raise ValueError(f"backbone feature {in_features[0]!r} has {channels} channels but the NASNet head "
                             f"built from MODEL.NASNET expects {ret['res5'].in_channels}")
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        head = build_nasnet_crop_head(cfg)
        return head, head.out_channels
