"""ImageNet-pretrained NASNet weights -> the NASNet parts of a detector, with a report.

A detector holds one or two embedded NASNets (the backbone's ``...nasnet`` and, for C4, the ROI head's
``roi_heads.res5.nasnet``), each with the cells it does not run deleted. A NASNet key such as ``cell_3.x``
therefore lives at exactly one detector path, e.g. ``backbone.bottom_up.nasnet.cell_3.x`` (FPN) or
``backbone.nasnet.cell_3.x`` / ``roi_heads.res5.nasnet.cell_9.x`` (C4). :func:`load_pretrained_nasnet` finds
those parts and loads each key where it lives; :func:`to_detector_state_dict` writes the renamed dict so
that detectron2's ``DetectionCheckpointer`` (``MODEL.WEIGHTS``) can load it as well.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nasnet_det.models.arch import CLASSIFIER_FIELDS, NASNetArch
from nasnet_det.models.hub import fetch_named_weights, is_named_weights
from nasnet_det.models.nasnet import NASNet
from nasnet_det.models.pretrained import (
    FORMAT,
    LoadReport,
    convert_external_state_dict,
    load_state_dict_report,
)
from nasnet_det.utils.io import load_torch_file

logger = logging.getLogger(__name__)

# Keys of a classification checkpoint that a detector has no use for.
CLASSIFIER_PREFIXES = ("last_linear.", "aux_head.")
@dataclass
class BackboneLoadReport(LoadReport):
    """Which pretrained tensors went where. Keys in ``matched``/``missing`` are detector paths."""

    source: str = ""
    ignored: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def all_matched(self) -> bool:
        """Every NASNet tensor of the detector got a pretrained value, and nothing else was left over."""
        return bool(self.matched) and not (self.missing or self.unexpected or self.shape_mismatch)

    def headline(self) -> str:
        return (f"NASNet weights from {self.source or '<state dict>'} into {', '.join(self.parts)}: "
                f"{super().headline()}; ignored classifier/aux {len(self.ignored)}")


def nasnet_parts(model: nn.Module) -> dict[str, NASNet]:
    """Detector path prefix (``"backbone.nasnet."``) -> embedded NASNet."""
    parts = {f"{name}.": m for name, m in model.named_modules() if isinstance(m, NASNet)}
    if not parts:
        raise ValueError("the model contains no NASNet; is MODEL.BACKBONE.NAME a NASNet backbone?")
    return parts


def _check_arch(arch: dict, nasnet: NASNet, source: str) -> None:
    """The checkpoint's network must be the config's (classifier and aux head aside). ``pad_mode`` changes no
    tensor shape but does change the outputs, so it counts too."""
    problems = NASNetArch.from_dict(arch, f"{source} arch").differences(
        NASNetArch.from_model(nasnet), ignore=CLASSIFIER_FIELDS)
    if problems:
        raise ValueError(f"{source}: the pretrained network does not match MODEL.NASNET:\n  " + "\n  ".join(problems))


def _check_our_payload(payload: dict, path: Path) -> None:
    for key in ("arch", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"MODEL.NASNET.WEIGHTS: {path} is a nasnet-det checkpoint without a valid {key!r} entry")


def read_pretrained(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, arch or None) from one of our checkpoints or a timm / pretrainedmodels state dict, given by
    path or by name (``timm://nasnetalarge``, ``pretrainedmodels://nasnetamobile``: :mod:`nasnet_det.models.hub`)."""
    if is_named_weights(path):
        return fetch_named_weights(str(path)), None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MODEL.NASNET.WEIGHTS: {path} does not exist")
    payload = load_torch_file(path, "MODEL.NASNET.WEIGHTS")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        _check_our_payload(payload, path)  # what read_checkpoint checks, without loading the file again
        return payload["state_dict"], payload["arch"]
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):  # common wrappers
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"MODEL.NASNET.WEIGHTS: {path} is neither a nasnet-det checkpoint nor a state dict")
    return {k.removeprefix("module."): v for k, v in payload.items()}, None


def load_pretrained_nasnet(model: nn.Module, weights: str | os.PathLike | dict[str, torch.Tensor],
                           strict: bool = True) -> BackboneLoadReport:
    """Load ImageNet NASNet weights into every NASNet part of ``model`` and report what matched.

    ``weights``: a nasnet-det checkpoint path (its arch is checked against the model), or a timm /
    pretrainedmodels state dict (path, dict, or a name such as ``timm://nasnetalarge``; names converted).
    With ``strict``, a missing, unexpected or
    shape-mismatched tensor raises ``ValueError`` (the classifier and aux head are always ignored).
    """
    source = str(weights) if not isinstance(weights, dict) else "<state dict>"
    if isinstance(weights, dict):
        state_dict, arch = weights, None
    else:
        state_dict, arch = read_pretrained(weights)
    parts = nasnet_parts(model)
    report = BackboneLoadReport(source=source, parts=[p.rstrip(".") for p in parts])
    first = next(iter(parts.values()))
    if arch is not None:
        _check_arch(arch, first, source)
    else:
        state_dict = convert_external_state_dict(state_dict, first)
    used: set[str] = set()
    for prefix, nasnet in parts.items():
        own = set(nasnet.state_dict())
        part_sd = {k: v for k, v in state_dict.items() if k in own}
        r = load_state_dict_report(nasnet, part_sd)
        used.update(part_sd)
        report.matched += [prefix + k for k in r.matched]
        report.missing += [prefix + k for k in r.missing]
        report.shape_mismatch += [(prefix + k, a, b) for k, a, b in r.shape_mismatch]
    for k in state_dict:
        if k not in used and not k.endswith("num_batches_tracked"):
            (report.ignored if k.startswith(CLASSIFIER_PREFIXES) else report.unexpected).append(k)
    logger.info("%s", report)
    if strict and not report.all_matched:
        raise ValueError(f"pretrained NASNet weights do not fit the detector (set MODEL.NASNET.* to the "
                         f"pretrained network's genotype and N@F):\n{report}")
    return report


def to_detector_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                           arch: dict | None = None) -> dict[str, torch.Tensor]:
    """Rename a NASNet state dict (ours, or timm / pretrainedmodels when ``arch`` is None) to detector paths,
    e.g. to save ``{"model": sd}`` for ``MODEL.WEIGHTS``. Classifier / aux keys are dropped."""
    parts = nasnet_parts(model)
    first = next(iter(parts.values()))
    if arch is None:
        state_dict = convert_external_state_dict(state_dict, first)
    out = {}
    for prefix, nasnet in parts.items():
        own = set(nasnet.state_dict())
        out.update({prefix + k: v for k, v in state_dict.items() if k in own})
    return out
