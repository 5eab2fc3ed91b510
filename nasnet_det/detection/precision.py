"""Mixed-precision training of the detector (``SOLVER.AMP``): which dtype, and the step trainer that uses it.

On CUDA, detectron2's ``AMPTrainer`` with ``precision=dtype``: bfloat16 where the GPU computes it natively
(compute capability >= 8: A100, H100, ...), with no gradient scaling (bfloat16 has float32's exponent range);
float16 elsewhere, with the gradient scaler float16 needs (its 5-bit exponent underflows small gradients).
On a CPU, where AMPTrainer needs CUDA, the losses are computed under ``torch.autocast("cpu", torch.bfloat16)``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer

from nasnet_det.utils.errors import BadInputError

AMP_PRECISIONS = ("auto", "bfloat16", "float16")
logger = logging.getLogger(__name__)


def validate_amp_precision(cfg: CfgNode) -> None:
    """``SOLVER.AMP.PRECISION``: one of :data:`AMP_PRECISIONS`; float16 only on CUDA (the gradient scaler)."""
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in AMP_PRECISIONS:
        raise BadInputError(f"SOLVER.AMP.PRECISION must be one of {', '.join(AMP_PRECISIONS)}, got {precision!r}")
    if cfg.SOLVER.AMP.ENABLED and precision == "float16" and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise BadInputError(f"SOLVER.AMP.PRECISION float16 needs CUDA (AMPTrainer's gradient scaler) but "
                            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r}; use bfloat16 or auto on a CPU")


def amp_dtype(cfg: CfgNode) -> torch.dtype | None:
    """The autocast dtype of ``cfg``'s training steps, None without ``SOLVER.AMP.ENABLED``. ``auto``: bfloat16
    on a CPU and on GPUs with native bfloat16, else float16 (``torch.cuda.is_bf16_supported`` without emulation:
    an emulated bfloat16 on an older GPU is slower than float32)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.PRECISION
    if precision == "auto":
        if not cfg.MODEL.DEVICE.startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if precision not in AMP_PRECISIONS:
        raise BadInputError(f"SOLVER.AMP.PRECISION must be one of {', '.join(AMP_PRECISIONS)}, got {precision!r}")
    return getattr(torch, precision)


class AutocastForward(torch.nn.Module):
    """Runs ``model``'s forward (the losses, in training) under ``torch.autocast``; the backward pass then runs
    outside it, as PyTorch's AMP recipe has it. SimpleTrainer's documented way to change how the losses are
    computed is to wrap the model; the wrapper is the step trainer's only, so checkpoints, hooks and DDP see the
    model itself."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(*args, **kwargs)


def build_step_trainer(cfg: CfgNode, model: torch.nn.Module, data_loader, optimizer) -> SimpleTrainer:
    """The per-iteration trainer: ``SimpleTrainer`` in float32; with ``SOLVER.AMP.ENABLED``, on CUDA detectron2's
    ``AMPTrainer`` in :func:`amp_dtype` (a gradient scaler for float16 only), on a CPU bfloat16 autocast."""
    dtype = amp_dtype(cfg)
    if dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    if cfg.MODEL.DEVICE.startswith("cuda"):
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype)
    if dtype != torch.bfloat16:
        raise BadInputError(f"SOLVER.AMP.PRECISION {cfg.SOLVER.AMP.PRECISION} needs CUDA but MODEL.DEVICE is "
                            f"{cfg.MODEL.DEVICE!r}; use bfloat16 or auto on a CPU")
    return SimpleTrainer(AutocastForward(model, "cpu", torch.bfloat16), data_loader, optimizer)


def resumable_step_state(step_trainer: SimpleTrainer, saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's step-trainer state (``_trainer``) as ``step_trainer.load_state_dict`` takes it. A float32
    run (``SimpleTrainer``) saved no ``grad_scaler``, which ``AMPTrainer`` requires: it gets the fresh scaler's
    state (a disabled bfloat16 scaler's is empty; a float16 one starts its loss scale afresh, which the log says)."""
    state = dict(saved)
    if isinstance(step_trainer, AMPTrainer) and not state.get("grad_scaler"):
        scaler = step_trainer.grad_scaler
        if scaler.is_enabled():
            logger.warning("the checkpoint has no float16 gradient-scaler state (it was trained in float32 or "
                           "bfloat16): the scaler starts afresh")
        state["grad_scaler"] = scaler.state_dict()
    return state
