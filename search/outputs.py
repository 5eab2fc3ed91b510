"""What a search leaves in its output directory besides the journal: best genotypes (JSON loadable by
``Genotype.load``), the top-k list, the reward plot, the drawing of the best cells and a summary."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from fvcore.common.config import CfgNode

from nasnet_det.utils.io import atomic_write
from search.draw import draw_genotype
from search.journal import Evaluation, Journal, finished_by_batch
from search.pareto import write_pareto
from search.plots import plot_rewards

FIRST_LAST_FRACTION = 4  # "first/last batches mean" averages the first/last quarter of the batches


def batch_means(evals: list[Evaluation]) -> list[float]:
    """Mean reward of the successful children of each batch (batches without one are left out)."""
    means = []
    for group in finished_by_batch(evals).values():
        rewards = [e.reward for e in group if e.status == "ok"]
        if rewards:
            means.append(float(np.mean(rewards)))
    return means


def first_last_means(means: list[float]) -> tuple[float | None, float | None]:
    """Mean of the first and of the last quarter (at least one) of the batch means: the one definition of
    "did the search improve" used by the summary, the CLI, the tests and bench/search_vs_random.py."""
    if not means:
        return None, None
    k = max(1, len(means) // FIRST_LAST_FRACTION)
    return float(np.mean(means[:k])), float(np.mean(means[-k:]))


def best_evaluations(evals: list[Evaluation], k: int) -> list[Evaluation]:
    ok = [e for e in evals if e.status == "ok"]
    return sorted(ok, key=lambda e: (-e.reward, e.id))[:k]


def last_batch_distinct(evals: list[Evaluation]) -> tuple[int, int]:
    """(children, distinct genotypes) of the last policy batch with at least two finished children."""
    for group in reversed(list(finished_by_batch(evals).values())):
        if len(group) >= 2:
            return len(group), len({json.dumps(e.decisions) for e in group})
    return 0, 0


def strategy_summary(evals: list[Evaluation], learned: bool = False) -> dict[str, Any]:
    """``learned``: the children came from a policy that learns (and so can collapse onto one genotype)."""
    finished = [e for e in evals if e.status != "pending"]
    ok = [e for e in finished if e.status == "ok"]
    means = batch_means(evals)
    first, last = first_last_means(means)
    best = best_evaluations(evals, 1)
    size, distinct = last_batch_distinct(evals)
    return {
        "evaluations": len(finished),
        "ok": len(ok),
        "failed": len(finished) - len(ok),
        "pending": len(evals) - len(finished),
        "best_reward": best[0].reward if best else None,
        "best_id": best[0].id if best else None,
        "mean_reward": float(np.mean([e.reward for e in ok])) if ok else None,
        "first_batches_mean": first,
        "last_batches_mean": last,
        "batch_means": means,
        "last_batch_distinct_genotypes": distinct,
        # A controller that samples one genotype only has stopped exploring: more budget buys nothing.
        "collapsed": learned and size >= 2 and distinct == 1,
        "child_seconds_total": float(sum(e.seconds or 0.0 for e in finished)),
        "failures": [{"id": e.id, "status": e.status, "error": e.error} for e in finished if e.status != "ok"][:20],
    }


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename: a kill never leaves a torn file."""
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def problems_of(summary: dict[str, Any]) -> list[str]:
    """One line per thing a person must know about a search's result: strategies whose children all
    failed, and controllers that collapsed onto one genotype."""
    lines = []
    for name, s in summary["strategies"].items():
        if s["evaluations"] and not s["ok"]:
            errors = sorted({f["error"] for f in s["failures"] if f["error"]})[:3]
            lines.append(f"{name}: every one of its {s['evaluations']} finished children failed "
                         f"(e.g. {'; '.join(errors) or 'no reason recorded'})")
        if s["collapsed"]:
            lines.append(f"{name}: the controller collapsed onto one genotype (its last batch sampled nothing "
                         "else); lower CONTROLLER.LR or raise CONTROLLER.ENTROPY_WEIGHT")
    return lines


def write_outputs(journal: Journal, out: Path, cfg: CfgNode, strategies: list[str],
                  learned: Collection[str] = ()) -> dict[str, Any]:
    """Best genotypes, top-k, plot and drawing of ``strategies``; ``learned``: those of them whose policy
    learns (checked for a collapse). Returns the summary."""
    by_strategy = {s: journal.all(s) for s in strategies}
    summary: dict[str, Any] = {"output_dir": str(out), "budget": cfg.SEARCH.BUDGET,
                               "batch_size": cfg.SEARCH.BATCH_SIZE, "strategies": {}}
    overall = []
    for name, evals in by_strategy.items():
        summary["strategies"][name] = strategy_summary(evals, name in learned)
        top = best_evaluations(evals, cfg.SEARCH.TOP_K)
        if top:  # later runs load these (Genotype.load): written atomically, like every file here
            top[0].found_genotype().save(out / f"best_genotype_{name}.json")
        overall += top
    top_all = sorted(overall, key=lambda e: (-e.reward, e.id))[:cfg.SEARCH.TOP_K]
    write_json_atomic(out / "top_k.json", [
        {"id": e.id, "strategy": e.strategy, "reward": e.reward, "params": e.params, "seconds": e.seconds,
         "accuracy": e.accuracy, "latency_ms": e.latency_ms, "mult_adds": e.mult_adds,
         "genotype": e.found_genotype().to_dict()} for e in top_all])
    if top_all:
        best = top_all[0].found_genotype()
        best.save(out / "best_genotype.json")
        summary["best"] = {"id": top_all[0].id, "strategy": top_all[0].strategy, "reward": top_all[0].reward,
                           "genotype_file": str(out / "best_genotype.json")}
        draw_genotype(best, out / "best_cells.png",
                      f"best: {best.name} ({top_all[0].strategy}), reward {top_all[0].reward:.4f}")
        summary["best"]["drawing"] = str(out / "best_cells.png")
    summary["reward_plot"] = str(plot_rewards(by_strategy, out / "rewards.png"))
    # The accuracy-latency front, when the children were profiled (SEARCH.OBJECTIVE latency, or LATENCY.RECORD)
    summary["pareto"] = write_pareto([e for evals in by_strategy.values() for e in evals], out, cfg)
    summary["usable"] = bool(top_all)  # at least one child trained: there is a best genotype to use
    summary["problems"] = problems_of(summary)
    return summary
