"""Strategies that sample from the NASNet controller (an LSTM policy) and update it by policy gradient."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from fvcore.common.config import CfgNode

from search.controller import Controller
from search.policy import PolicyTrainer
from search.strategies.base import Strategy


class ControllerPolicy(Strategy):
    """The controller with its :class:`~search.policy.PolicyTrainer` (``CONTROLLER.*``). Its weights are
    drawn from torch's global generator: the caller seeds it first."""

    learns = True
    algorithm: ClassVar[str]  # PolicyTrainer's update: "ppo" or "reinforce"

    def __init__(self, cfg: CfgNode, algorithm: str | None = None):
        super().__init__(cfg)
        c = cfg.CONTROLLER
        self.controller = Controller(self.num_blocks, c.HIDDEN, c.INIT_RANGE)
        self.trainer = PolicyTrainer(self.controller, algorithm or self.algorithm, c.LR, c.ENTROPY_WEIGHT,
                                     c.BASELINE_DECAY, c.PPO_EPOCHS, c.PPO_CLIP, c.GRAD_CLIP,
                                     c.NORMALIZE_ADVANTAGE)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        decisions, logp, _ = self.controller.sample(n, generator)
        return decisions, logp

    def update(self, decisions: torch.Tensor, logprobs: torch.Tensor | None, rewards: torch.Tensor
               ) -> dict[str, float]:
        return self.trainer.update(decisions, logprobs, rewards)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.trainer.load_state_dict(state["trainer"])
