"""Loss / accuracy curves from a run's metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nasnet_det.classification.metrics import read_metrics  # noqa: E402
from nasnet_det.utils.io import save_figure  # noqa: E402


def plot_training_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Two panels: train/eval loss and train/eval top-1 accuracy against optimizer step."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    emas = [r for r in records if r["type"] == "eval_ema"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
        ax_acc.plot([r["step"] for r in train], [r["top1"] for r in train], label="train")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
        ax_acc.plot([r["step"] for r in evals], [r["top1"] for r in evals], "o-", label="eval")
    if emas:
        ax_loss.plot([r["step"] for r in emas], [r["loss"] for r in emas], "s--", label="eval (EMA)")
        ax_acc.plot([r["step"] for r in emas], [r["top1"] for r in emas], "s--", label="eval (EMA)")
    ax_loss.set(xlabel="step", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_path, dpi=100)
