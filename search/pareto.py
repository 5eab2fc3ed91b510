"""The accuracy-latency Pareto front of a search: ``pareto.json`` (every profiled child, the front with its
cells, NASNet-A's cost) and ``pareto.png`` (every child, the front, NASNet-A marked).

NASNet-A is marked by its latency only (a vertical line): its accuracy under the search's child training is
not known without training it as a child, and its published accuracy (full training) is not comparable with
the children's short-training accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from fvcore.common.config import CfgNode  # noqa: E402

from nasnet_det.utils.io import atomic_write, save_figure  # noqa: E402
from search.journal import Evaluation  # noqa: E402

PARETO_JSON, PARETO_PNG = "pareto.json", "pareto.png"
NASNET_A_NOTE = ("latency only: NASNet-A's accuracy under this search's child training is unknown (it is not "
                 "trained as a child) and its published accuracy is not comparable")


def _accuracy(e: Evaluation) -> float:
    return float(e.accuracy if e.accuracy is not None else e.reward)


def profiled(evals: list[Evaluation]) -> tuple[list[Evaluation], str]:
    """The successful children with a cost, and the cost they are compared by: ``latency_ms`` when they
    were timed, else ``mult_adds`` (the flops estimator)."""
    ok = [e for e in evals if e.status == "ok"]
    timed = [e for e in ok if e.latency_ms is not None]
    if timed:
        return timed, "latency_ms"
    return [e for e in ok if e.mult_adds is not None], "mult_adds"


def pareto_front(evals: list[Evaluation], metric: str) -> list[Evaluation]:
    """The children no other child beats on both accuracy (higher) and ``metric`` (lower), by rising cost."""
    front: list[Evaluation] = []
    for e in sorted(evals, key=lambda e: (getattr(e, metric), -_accuracy(e), e.id)):
        if not front or _accuracy(e) > _accuracy(front[-1]):
            front.append(e)
    return front


def _row(e: Evaluation) -> dict[str, Any]:
    return {"id": e.id, "strategy": e.strategy, "accuracy": _accuracy(e), "reward": e.reward,
            "latency_ms": e.latency_ms, "mult_adds": e.mult_adds, "backbone_params": e.backbone_params}


def write_pareto(evals: list[Evaluation], out: Path, cfg: CfgNode) -> dict[str, Any] | None:
    """Write ``pareto.json`` and ``pareto.png`` into ``out`` from the profiled children of ``evals``; None
    (nothing written) when no child was profiled."""
    from search.objective import Objective  # the estimators load only when there is something to plot

    points, metric = profiled(evals)
    if not points:
        return None
    objective = Objective(cfg)
    ref = objective.profile("nasnet_a")
    front = pareto_front(points, metric)
    lat = cfg.SEARCH.LATENCY
    data = {
        "metric": metric, "unit": "ms" if metric == "latency_ms" else "mult-adds",
        "setting": {"estimator": lat.ESTIMATOR, "device": lat.DEVICE, "input_size": lat.INPUT_SIZE,
                    "backbone": lat.BACKBONE, "num_cells": lat.NUM_CELLS, "filters": lat.FILTERS,
                    "threads": lat.THREADS, "objective": cfg.SEARCH.OBJECTIVE},
        "nasnet_a": {"latency_ms": ref.latency_ms, "mult_adds": ref.mult_adds, "backbone_params": ref.params,
                     "accuracy": None, "note": NASNET_A_NOTE},
        "front": [{**_row(e), "genotype": e.found_genotype().to_dict()} for e in front],
        # every profiled child with its cell: a budget's k most accurate need not all be on the front
        "children": [{**_row(e), "genotype": e.found_genotype().to_dict()} for e in points],
    }
    atomic_write(out / PARETO_JSON, json.dumps(data, indent=2) + "\n")
    plot_pareto(points, front, metric, getattr(ref, "latency_ms" if metric == "latency_ms" else "mult_adds"),
                out / PARETO_PNG)
    return {"file": str(out / PARETO_JSON), "plot": str(out / PARETO_PNG), "front_size": len(front),
            "children": len(points), "metric": metric}


def plot_pareto(points: list[Evaluation], front: list[Evaluation], metric: str, nasnet_a_cost: float | None,
                path: Path) -> Path:
    scale = 1.0 if metric == "latency_ms" else 1e-6
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in sorted({e.strategy for e in points}):
        mine = [e for e in points if e.strategy == strategy]
        ax.scatter([getattr(e, metric) * scale for e in mine], [_accuracy(e) for e in mine], s=14, alpha=0.5,
                   label=f"{strategy} ({len(mine)} children)")
    ax.step([getattr(e, metric) * scale for e in front], [_accuracy(e) for e in front], "-", where="post",
            color="black", linewidth=1.2, label=f"Pareto front ({len(front)})")
    ax.scatter([getattr(e, metric) * scale for e in front], [_accuracy(e) for e in front], s=28,
               facecolors="none", edgecolors="black")
    if nasnet_a_cost is not None:
        ax.axvline(nasnet_a_cost * scale, color="tab:red", linestyle="--", label="NASNet-A (its latency)")
    ax.set_xlabel("detection backbone latency (ms)" if metric == "latency_ms" else "backbone mult-adds (M)")
    ax.set_ylabel("child accuracy (held-out)")
    ax.set_title("Accuracy vs detection latency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
