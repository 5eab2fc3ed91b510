"""Optimizer, LR schedule and weight EMA of the paper's training recipes, from timm and fvcore.

- TF-style RMSProp (eps inside the sqrt, mean square starting at 1, LR inside the momentum) is
  ``timm.optim.RMSpropTF``; tests/classification/test_optim.py checks it against the TensorFlow update.
- LR schedules are fvcore param schedulers (warmup + cosine / multi-step / staircase exponential), stepped
  once per optimizer step through ``LambdaLR`` (what detectron2's ``LRMultiplier`` does).
- The weight EMA is timm's ``ModelEmaV3`` with slim's decay warm-up, which timm's warm-up formula does not
  reproduce (see :class:`ModelEma`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from timm.optim import RMSpropTF
from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["ModelEma", "RMSpropTF", "build_optimizer", "build_scheduler", "lr_multiplier_fn", "parameter_groups",
           "set_base_lr", "upgrade_former_rmsprop_state"]


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: conv/FC weights with weight decay, BN parameters and biases without (slim's L2 scope)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if (p.ndim > 1 or decay_norm_and_bias) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}] + \
        ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


def build_optimizer(cfg, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """``cfg.SOLVER``'s optimizer at ``lr``: the run's effective LR (the trainer passes its schedule's, see
    nasnet_det/engine/scaling.py); None = ``SOLVER.BASE_LR`` as written."""
    s = cfg.SOLVER
    lr = s.BASE_LR if lr is None else lr
    groups = parameter_groups(model, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM_AND_BIAS)
    if s.OPTIMIZER == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=s.MOMENTUM, nesterov=s.NESTEROV)
    if s.OPTIMIZER == "rmsprop":  # coupled weight decay (L2 in the loss), as slim
        return RMSpropTF(groups, lr=lr, alpha=s.RMSPROP_DECAY, eps=s.RMSPROP_EPS, momentum=s.MOMENTUM)
    raise ValueError(f"SOLVER.OPTIMIZER must be 'sgd' or 'rmsprop', got {s.OPTIMIZER!r}")


def upgrade_former_rmsprop_state(optimizer: torch.optim.Optimizer, step: int) -> None:
    """Let timm's RMSpropTF continue from a checkpoint of the hand-written one it replaced (same update;
    ``decay`` was timm's ``alpha``, and there was no step count)."""
    if not isinstance(optimizer, RMSpropTF):
        return
    for group in optimizer.param_groups:
        if "decay" in group:
            group["alpha"] = group.pop("decay")
        for key, value in optimizer.defaults.items():
            group.setdefault(key, value)
    for state in optimizer.state.values():
        state.setdefault("step", torch.tensor(float(step)))


def _constant(value: float) -> ParamScheduler:
    # fvcore's ConstantParamScheduler rejects where == 1.0, which LambdaLR asks for after the last step.
    return LinearParamScheduler(value, value)


def _steps(milestones: list[int], gamma: float, total_steps: int) -> ParamScheduler:
    """x ``gamma`` at each milestone step (repeats compound). Milestones <= 0 apply from the start; those at or
    after the last step drop (fvcore requires milestones < num_updates; they would only change the LR after
    the last step, which no step uses)."""
    inside = sorted(m for m in milestones if 0 < m < total_steps)
    unique = sorted(set(inside))
    before = sum(m <= 0 for m in milestones)
    values = [gamma ** (before + sum(m <= u for m in inside)) for u in [0, *unique]]
    if not unique:
        return _constant(values[0])
    return MultiStepParamScheduler(values, num_updates=total_steps, milestones=unique)


def lr_multiplier_fn(cfg, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> LR multiplier: linear warmup from WARMUP_FACTOR, then cosine (to MIN_LR_FACTOR over the
    remaining steps) / x GAMMA at STEP_EPOCHS / x EXP_DECAY_RATE every EXP_DECAY_EPOCHS after warmup
    (staircase) / constant."""
    s = cfg.SOLVER
    total = max(1, total_steps)
    configured_warmup = int(round(s.WARMUP_EPOCHS * steps_per_epoch))
    warmup = min(total, configured_warmup)
    if s.LR_SCHEDULE == "cosine":
        main, scaling = CosineParamScheduler(1.0, s.MIN_LR_FACTOR), "rescaled"  # over the steps after warmup
    elif s.LR_SCHEDULE == "step":
        main, scaling = _steps([int(round(e * steps_per_epoch)) for e in s.STEP_EPOCHS], s.GAMMA, total), "fixed"
    elif s.LR_SCHEDULE == "exponential":
        every = max(1, int(round(s.EXP_DECAY_EPOCHS * steps_per_epoch)))
        main, scaling = _steps(list(range(warmup + every, total, every)), s.EXP_DECAY_RATE, total), "fixed"
    else:
        main, scaling = _constant(1.0), "fixed"
    schedule: ParamScheduler = main
    if warmup >= total:  # the run ends inside the warmup: the LR rises at the configured warmup's slope
        end = s.WARMUP_FACTOR + (1.0 - s.WARMUP_FACTOR) * total / configured_warmup
        schedule = LinearParamScheduler(s.WARMUP_FACTOR, end)
    elif warmup > 0:
        schedule = CompositeParamScheduler([LinearParamScheduler(s.WARMUP_FACTOR, 1.0), main],
                                           interval_scaling=["rescaled", scaling],
                                           lengths=[warmup / total, 1.0 - warmup / total])
    return lambda step: schedule(min(1.0, step / total))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier_fn(cfg, total_steps, steps_per_epoch))


def set_base_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> bool:
    """Make ``lr`` the base LR of ``optimizer``'s groups and of ``scheduler`` (a :func:`build_scheduler` LambdaLR),
    with the current LR at ``lr`` x the schedule's multiplier of the current step. Returns False (and changes
    nothing) when every base LR is ``lr`` already."""
    if all(base == lr for base in scheduler.base_lrs):
        return False
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, multiplier in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * multiplier(scheduler.last_epoch)
    return True


class ModelEma(ModelEmaV3):
    """timm's EMA of a model's weights and float buffers (paper: decay 0.9999, used for evaluation).

    Kept as a subclass for one reason (tests/classification/test_optim.py shows it): with ``warmup`` the decay of
    update ``t`` (0-based: the optimizer steps done before it) is slim's ``min(decay, (1 + t) / (10 + t))``
    (``ExponentialMovingAverage(decay, global_step)``); timm's warm-up ``1 - (1 + t / gamma) ** -power``
    equals it for no (gamma, power), and timm's plain decay copies the weights on the first two updates.
    Checkpoints hold ``.module.state_dict()`` (the network's own keys).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        super().__init__(model, decay=decay, use_warmup=warmup)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def get_decay(self, step: int | None = None) -> float:
        if not self.use_warmup or step is None:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))
