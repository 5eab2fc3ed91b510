"""Export a training checkpoint as backbone weights for detection (nasnet-det/v1 format, no optimizer state)."""

from __future__ import annotations

import os
from pathlib import Path

from nasnet_det.classification.checkpoint import read_intact_checkpoint
from nasnet_det.models import create_model
from nasnet_det.models.pretrained import load_state_dict_report, save_checkpoint


def export_backbone(checkpoint: str | os.PathLike, out_path: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write ``out_path`` = {"format", "arch", "state_dict"} from a training checkpoint.

    The EMA weights are exported when the checkpoint has them (``use_ema``), since they are the ones
    evaluated; the result loads with ``nasnet_det.models.pretrained.load_checkpoint``.
    """
    payload = read_intact_checkpoint(checkpoint)
    state_dict = payload["state_dict"]
    source = "weights"
    if use_ema and payload.get("ema_state_dict") is not None:
        state_dict, source = payload["ema_state_dict"], "EMA weights"
    model = create_model(payload["arch"])
    report = load_state_dict_report(model, state_dict)
    if report.missing or report.unexpected or report.shape_mismatch:
        raise ValueError(f"{checkpoint}: {source} do not fit the stored arch:\n{report}")
    meta = {k: payload[k] for k in ("step", "epoch") if k in payload}
    return save_checkpoint(model, out_path, exported_from=str(checkpoint), weights=source, **meta)
