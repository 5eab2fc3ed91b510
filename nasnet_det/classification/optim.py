"""Optimizers, learning-rate schedules and the weight EMA of the paper's training recipes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow (and the paper's ImageNet recipe) defines it.

    Unlike ``torch.optim.RMSprop``, epsilon sits inside the square root and the mean square starts at 1,
    which matters with the paper's eps = 1.0:  ``ms = decay*ms + (1-decay)*g^2``,
    ``mom = momentum*mom + lr*g/sqrt(ms + eps)``, ``w -= mom``. Weight decay is coupled (L2 in the loss).
    """

    def __init__(self, params: Iterable, lr: float = 0.01, decay: float = 0.9, eps: float = 1.0,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        if lr < 0 or not 0.0 <= decay < 1.0 or eps < 0 or momentum < 0:
            raise ValueError(f"bad RMSpropTF hyperparameters lr={lr} decay={decay} eps={eps} momentum={momentum}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                square_avg, buf = state["square_avg"], state["momentum_buffer"]
                square_avg.mul_(group["decay"]).addcmul_(grad, grad, value=1.0 - group["decay"])
                update = grad / (square_avg + group["eps"]).sqrt_()
                buf.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                p.sub_(buf)
        return loss


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: conv/FC weights with weight decay, BN parameters and biases without (slim's L2 scope)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if (p.ndim > 1 or decay_norm_and_bias) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    groups = parameter_groups(model, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM_AND_BIAS)
    if s.OPTIMIZER == "sgd":
        return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)
    if s.OPTIMIZER == "rmsprop":
        return RMSpropTF(groups, lr=s.BASE_LR, decay=s.RMSPROP_DECAY, eps=s.RMSPROP_EPS, momentum=s.MOMENTUM)
    raise ValueError(f"SOLVER.OPTIMIZER must be 'sgd' or 'rmsprop', got {s.OPTIMIZER!r}")


def lr_multiplier_fn(cfg, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> LR multiplier: linear warmup, then cosine / step / exponential (staircase) / constant."""
    s = cfg.SOLVER
    warmup = int(round(s.WARMUP_EPOCHS * steps_per_epoch))
    milestones = [int(round(e * steps_per_epoch)) for e in s.STEP_EPOCHS]
    decay_every = max(1, int(round(s.EXP_DECAY_EPOCHS * steps_per_epoch)))

    def multiplier(step: int) -> float:
        if step < warmup:
            return s.WARMUP_FACTOR + (1.0 - s.WARMUP_FACTOR) * step / warmup
        if s.LR_SCHEDULE == "cosine":
            t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return s.MIN_LR_FACTOR + (1.0 - s.MIN_LR_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * t))
        if s.LR_SCHEDULE == "step":
            return s.GAMMA ** sum(step >= m for m in milestones)
        if s.LR_SCHEDULE == "exponential":
            return s.EXP_DECAY_RATE ** ((step - warmup) // decay_every)
        return 1.0

    return multiplier


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier_fn(cfg, total_steps, steps_per_epoch))


class ModelEma:
    """Exponential moving average of a model's weights (paper: decay 0.9999, used for evaluation).

    Buffers (BN running statistics) are averaged too; integer buffers are copied. With ``warmup`` the decay
    of update ``t`` (0-based: the optimizer steps done before it) is ``min(decay, (1 + t) / (10 + t))``, as
    slim's ``ExponentialMovingAverage(decay, global_step)``, so early averages are not dominated by the
    random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, num_updates: int | None) -> float:
        if not self.warmup or num_updates is None:
            return self.decay
        return min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int | None = None) -> None:
        decay = self.decay_at(num_updates)
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1.0 - decay)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.module.load_state_dict(state_dict)
