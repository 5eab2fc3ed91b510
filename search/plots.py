"""Reward-over-time plot of one or several strategies (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nasnet_det.utils.io import save_figure  # noqa: E402
from search.journal import Evaluation, finished_by_batch  # noqa: E402

_COLOURS = {"ppo": "tab:blue", "reinforce": "tab:green", "random": "tab:orange"}


def plot_rewards(by_strategy: dict[str, list[Evaluation]], path: str | Path) -> Path:
    """Per strategy: each child's reward (dots; failed children as crosses at 0), each policy
    batch's mean reward (line, drawn over the batch's span of evaluations) and the best so far (dashed).
    The x axis counts every finished child, failed ones included, in the order they finished."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, evals in by_strategy.items():
        groups = finished_by_batch(evals)
        if not groups:
            continue
        colour = _COLOURS.get(name)
        xs_ok, r_ok, xs_failed, mid, means = [], [], [], [], []
        x = 0
        for group in groups.values():
            first = x + 1
            rewards = []
            for e in group:
                x += 1
                if e.status == "ok":
                    xs_ok.append(x)
                    r_ok.append(e.reward)
                    rewards.append(e.reward)
                else:
                    xs_failed.append(x)
            if rewards:
                mid.append((first + x) / 2)
                means.append(float(np.mean(rewards)))
        if xs_ok:
            ax.scatter(xs_ok, r_ok, s=8, alpha=0.35, color=colour)
            ax.plot(mid, means, "-", color=colour, label=f"{name} (batch mean)")
            ax.step(xs_ok, np.maximum.accumulate(r_ok), "--", where="post", color=colour, alpha=0.8,
                    label=f"{name} (best so far)")
        if xs_failed:
            ax.scatter(xs_failed, [0.0] * len(xs_failed), marker="x", s=18, color=colour,
                       label=f"{name} (failed: {len(xs_failed)}, drawn at 0)")
    ax.set_xlabel("child models evaluated")
    ax.set_ylabel("reward (held-out accuracy)")
    ax.set_title("Architecture search: reward over time")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)  # a kill mid-write leaves the previous plot
