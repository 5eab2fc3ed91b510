"""Checkpoints: our own format, and import of timm (``nasnetalarge``) / Cadene (``nasnetamobile``) weights.

Our format (written by :func:`save_checkpoint`, read by :func:`load_checkpoint`) is a ``.pth`` holding
``{"format": "nasnet-det/v1", "arch": NASNet.arch, "state_dict": ...}`` plus any extra keys (training
state). The arch record (read as :class:`nasnet_det.models.arch.NASNetArch`) carries the genotype and N@F,
so the network is rebuilt from the file alone.

timm and Cadene name parameters as we do except for two things, which :func:`convert_external_state_dict`
maps: the factorized reduction of h_{i-1} lives on the cell (``cell_0.path_1.conv``; ours
``cell_0.prev_reduce.path_1.conv``), and Cadene's mobile model keeps the large model's cell numbering with
gaps (``cell_6`` is our ``cell_4`` when N=4).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasnet_det.models.arch import NASNetArch
from nasnet_det.models.factory import create_model
from nasnet_det.models.hub import fetch_named_weights
from nasnet_det.models.nasnet import NASNet
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.io import atomic_torch_save, load_torch_file

FORMAT = "nasnet-det/v1"
_CELL_KEY = re.compile(r"^cell_(\d+)\.")
_PREV_REDUCE = re.compile(r"^((?:cell_stem_\d+|cell_\d+|reduction_cell_\d+))\.(path_1|path_2|final_path_bn)\.")


@dataclass
class LoadReport:
    """What a state-dict load matched. ``str(report)`` is a human summary."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def headline(self) -> str:
        return (f"matched {len(self.matched)} tensors; missing {len(self.missing)}; "
                f"unexpected {len(self.unexpected)}; shape mismatch {len(self.shape_mismatch)}")

    def __str__(self) -> str:
        lines = [self.headline()]
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                lines.append(f"  {title}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        for k, theirs, ours in self.shape_mismatch[:8]:
            lines.append(f"  shape mismatch {k}: checkpoint {theirs} vs model {ours}")
        return "\n".join(lines)


def _param_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def convert_external_state_dict(state_dict: dict[str, torch.Tensor], model: NASNet) -> dict[str, torch.Tensor]:
    """Rename a timm / Cadene NASNet-A state dict to this model's parameter names."""
    n = model.num_cells
    gapped = any(int(m.group(1)) >= 3 * n for k in state_dict if (m := _CELL_KEY.match(k)))
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if gapped:  # Cadene mobile: stack s, cell j is named cell_{6s+j}
            key = _CELL_KEY.sub(lambda m: f"cell_{(int(m.group(1)) // 6) * n + int(m.group(1)) % 6}.", key)
        key = _PREV_REDUCE.sub(r"\1.prev_reduce.\2.", key)
        out[key] = value
    return out


def load_state_dict_report(model: nn.Module, state_dict: dict[str, torch.Tensor],
                           skip_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Load what matches by name and shape; report everything else instead of failing."""
    own = _param_keys(model)
    report = LoadReport()
    usable = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
            report.matched.append(key)
    report.missing = [k for k in own if k not in usable and not k.startswith(skip_prefixes)]
    model.load_state_dict(usable, strict=False)
    return report


def load_external_weights(model: NASNet, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load timm ``nasnetalarge`` / Cadene ``nasnetamobile`` weights into a NASNet-A model.

    They carry no aux head, so those keys are not reported missing. A classifier with another class count
    is reported as a shape mismatch and left at its initialisation.
    """
    return load_state_dict_report(model, convert_external_state_dict(state_dict, model), ("aux_head.",))


def load_named_weights(model: NASNet, spec: str, key: str = "MODEL.NASNET.WEIGHTS") -> LoadReport:
    """Load the published weights ``spec`` names (``timm://nasnetalarge``, ``pretrainedmodels://nasnetamobile``;
    :mod:`nasnet_det.models.hub`) into a classifier. Only the classifier may differ (another class count, left at
    its initialisation); any other tensor that does not fit means another network: :class:`BadInputError`."""
    report = load_external_weights(model, fetch_named_weights(spec, key))
    problems = [k for k in report.missing + report.unexpected + [k for k, _, _ in report.shape_mismatch]
                if not k.startswith("last_linear.")]
    if problems:
        raise BadInputError(f"{key} {spec} does not fit MODEL.NASNET (set MODEL.NASNET.PRESET to the published "
                            f"network, nasnet_a_mobile or nasnet_a_large): {report.headline()}; first: {problems[0]}")
    return report


def save_checkpoint(model: NASNet, path: str | os.PathLike, **extra: Any) -> Path:
    """Atomically write ``model`` (arch + weights) and ``extra`` entries to ``path``."""
    payload = {"format": FORMAT, "arch": model.arch, "state_dict": model.state_dict(), **extra}
    return atomic_torch_save(payload, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of one of our checkpoints, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = load_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a nasnet-det checkpoint (expected a dict with format={FORMAT!r}); "
                         "for timm / pretrainedmodels weights use load_external_weights")
    for key in ("arch", "state_dict"):
        if key not in payload:
            raise ValueError(f"{path}: checkpoint has no {key!r} entry")
    return payload


def read_arch(path: str | os.PathLike) -> NASNetArch:
    """The arch record of one of our checkpoints."""
    return NASNetArch.from_dict(read_checkpoint(path)["arch"], where=f"{path} arch")


def _explained_by_overrides(key: str, overrides: dict[str, Any]) -> bool:
    """Whether a missing / unexpected / reshaped key follows from the requested overrides."""
    if "num_classes" in overrides and key.startswith(("last_linear.", "aux_head.classifier.")):
        return True
    return "aux_head" in overrides and key.startswith("aux_head.")


def load_checkpoint(path: str | os.PathLike, **overrides: Any) -> tuple[NASNet, dict[str, Any]]:
    """Rebuild the network stored at ``path`` and load its weights; returns (model, payload).

    ``overrides`` change constructor arguments (e.g. ``num_classes=20``, ``drop_path_keep_prob=0.7``).
    Weights the overrides make inapplicable (a new classifier, a dropped aux head) are skipped; any other
    tensor that does not fit is an error.
    """
    payload = read_checkpoint(path)
    model = create_model(NASNetArch.from_dict(payload["arch"], f"{path} arch"), **overrides)
    report = load_state_dict_report(model, payload["state_dict"])
    problems = [k for k in report.missing + report.unexpected + [k for k, _, _ in report.shape_mismatch]
                if not _explained_by_overrides(k, overrides)]
    if problems:
        raise ValueError(f"{path}: weights do not fit the architecture they were saved with"
                         f"{' and the overrides ' + str(sorted(overrides)) if overrides else ''}:\n{report}")
    return model, payload
