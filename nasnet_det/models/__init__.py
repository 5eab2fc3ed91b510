"""NASNet networks. :func:`create_model` builds one from a preset name, an arch record (as a checkpoint
stores it) or the ``MODEL.NASNET`` config node (see :mod:`nasnet_det.models.config`)."""

from __future__ import annotations

from nasnet_det.models.arch import NASNetArch
from nasnet_det.models.config import PRESETS, add_nasnet_model_config
from nasnet_det.models.factory import create_model
from nasnet_det.models.nasnet import NASNet, filters_for_penultimate

__all__ = ["PRESETS", "NASNet", "NASNetArch", "add_nasnet_model_config", "create_model", "filters_for_penultimate"]
