"""Reward-over-time plot of one or several strategies (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from search.journal import Evaluation  # noqa: E402

_COLOURS = {"ppo": "tab:blue", "reinforce": "tab:green", "random": "tab:orange"}


def plot_rewards(by_strategy: dict[str, list[Evaluation]], path: str | Path, batch_size: int) -> Path:
    """Each finished child's reward (dots), the batch mean (line) and the best so far (dashed), per strategy."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, evals in by_strategy.items():
        ok = [e for e in evals if e.status == "ok"]
        if not ok:
            continue
        colour = _COLOURS.get(name)
        x = np.arange(1, len(ok) + 1)
        r = np.array([e.reward for e in ok])
        ax.scatter(x, r, s=8, alpha=0.35, color=colour)
        starts = np.arange(0, len(r), batch_size)
        means = [r[s:s + batch_size].mean() for s in starts]
        ax.plot(starts + np.minimum(batch_size, len(r) - starts) / 2 + 0.5, means, "-", color=colour,
                label=f"{name} (batch mean)")
        ax.plot(x, np.maximum.accumulate(r), "--", color=colour, alpha=0.8, label=f"{name} (best so far)")
    ax.set_xlabel("child models evaluated")
    ax.set_ylabel("reward (held-out accuracy)")
    ax.set_title("Architecture search: reward over time")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
