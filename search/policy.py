"""Policy-gradient updates of the controller: PPO (clipped surrogate) and REINFORCE, both with the
paper's exponential-moving-average reward baseline and an entropy bonus."""

from __future__ import annotations

from typing import Any

import torch

from search.controller import Controller

ADVANTAGE_STD_FLOOR = 1e-3  # smallest reward std that advantages are divided by
ADVANTAGE_CLIP = 5.0  # bound on a normalised advantage


class PolicyTrainer:
    """Owns the controller's optimizer and reward baseline. ``update`` takes one batch of sampled
    decisions, the log-probabilities they had when sampled, and their rewards."""

    def __init__(self, controller: Controller, algorithm: str = "ppo", lr: float = 0.00035,
                 entropy_weight: float = 1e-5, baseline_decay: float = 0.95, ppo_epochs: int = 4,
                 ppo_clip: float = 0.2, grad_clip: float = 5.0, normalize_advantage: bool = True):
        if algorithm not in ("ppo", "reinforce"):
            raise ValueError(f"policy algorithm must be 'ppo' or 'reinforce', got {algorithm!r}")
        self.controller, self.algorithm = controller, algorithm
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.entropy_weight, self.baseline_decay = entropy_weight, baseline_decay
        self.ppo_epochs, self.ppo_clip, self.grad_clip = ppo_epochs, ppo_clip, grad_clip
        self.normalize_advantage = normalize_advantage
        self.baseline: float | None = None

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Reward minus the moving-average baseline (first batch: its own mean), then update the baseline."""
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        adv = rewards - self.baseline
        for r in rewards.tolist():  # per-sample EMA, in sampling order
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * r
        if self.normalize_advantage and len(rewards) > 1:
            # The floor keeps a batch of (near-)tied rewards from dividing by ~0 (accuracies on ~1000
            # held-out images move in 1e-3 steps). The numerator is the gap to a lagging baseline, not to the
            # batch mean, so a tied batch can still be far from it: the clip bounds what is left.
            adv = (adv / rewards.std().clamp_min(ADVANTAGE_STD_FLOOR)).clamp(-ADVANTAGE_CLIP, ADVANTAGE_CLIP)
        return adv

    def update(self, actions: torch.Tensor, old_logp: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
        rewards = rewards.float()
        adv = self.advantages(rewards)
        epochs = self.ppo_epochs if self.algorithm == "ppo" else 1
        stats: dict[str, float] = {}
        for _ in range(epochs):
            logp, ent = self.controller.evaluate(actions)
            if self.algorithm == "ppo":
                ratio = torch.exp(logp - old_logp)
                clipped = ratio.clamp(1 - self.ppo_clip, 1 + self.ppo_clip)
                pg_loss = -torch.min(ratio * adv, clipped * adv).mean()
            else:
                pg_loss = -(adv * logp).mean()
            loss = pg_loss - self.entropy_weight * ent.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
            self.optimizer.step()
            stats = {"loss": float(loss.detach()), "entropy": float(ent.detach().mean()),
                     "baseline": float(self.baseline)}
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
