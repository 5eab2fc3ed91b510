"""What a search leaves in its output directory besides the journal: best genotypes (JSON loadable by
``Genotype.load``), the top-k list, the reward plot, the drawing of the best cells and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from fvcore.common.config import CfgNode

from search.journal import Journal


def strategy_summary(evals, batch_size: int) -> dict[str, Any]:
    from search.runner import batch_means, best_evaluations

    finished = [e for e in evals if e.status != "pending"]
    ok = [e for e in finished if e.status == "ok"]
    means = batch_means(evals)
    k = max(1, len(means) // 4)  # first / last quarter of the batches
    best = best_evaluations(evals, 1)
    return {
        "evaluations": len(finished),
        "ok": len(ok),
        "failed": len(finished) - len(ok),
        "pending": len(evals) - len(finished),
        "best_reward": best[0].reward if best else None,
        "best_id": best[0].id if best else None,
        "mean_reward": float(np.mean([e.reward for e in ok])) if ok else None,
        "first_batches_mean": float(np.mean(means[:k])) if means else None,
        "last_batches_mean": float(np.mean(means[-k:])) if means else None,
        "batch_means": means,
        "child_seconds_total": float(sum(e.seconds or 0.0 for e in finished)),
        "failures": [{"id": e.id, "error": e.error} for e in finished if e.status == "failed"][:20],
    }


def write_outputs(journal: Journal, out: Path, cfg: CfgNode, strategies: list[str]) -> dict[str, Any]:
    from search.draw import draw_genotype
    from search.plots import plot_rewards
    from search.runner import best_evaluations, genotype_of

    by_strategy = {s: journal.all(s) for s in strategies}
    summary: dict[str, Any] = {"output_dir": str(out), "budget": cfg.SEARCH.BUDGET,
                               "batch_size": cfg.SEARCH.BATCH_SIZE, "strategies": {}}
    overall = []
    for name, evals in by_strategy.items():
        summary["strategies"][name] = strategy_summary(evals, cfg.SEARCH.BATCH_SIZE)
        top = best_evaluations(evals, cfg.SEARCH.TOP_K)
        if top:
            genotype_of(top[0], f"search_{name}_{top[0].id}").save(out / f"best_genotype_{name}.json")
        overall += top
    top_all = sorted(overall, key=lambda e: (-e.reward, e.id))[:cfg.SEARCH.TOP_K]
    (out / "top_k.json").write_text(json.dumps(
        [{"id": e.id, "strategy": e.strategy, "reward": e.reward, "params": e.params, "seconds": e.seconds,
          "genotype": genotype_of(e, f"search_{e.strategy}_{e.id}").to_dict()} for e in top_all], indent=2) + "\n")
    if top_all:
        best = genotype_of(top_all[0], f"search_{top_all[0].strategy}_{top_all[0].id}")
        summary["best"] = {"id": top_all[0].id, "strategy": top_all[0].strategy, "reward": top_all[0].reward,
                           "genotype_file": str(best.save(out / "best_genotype.json"))}
        draw_genotype(best, out / "best_cells.png",
                      f"best: {best.name} ({top_all[0].strategy}), reward {top_all[0].reward:.4f}")
        summary["best"]["drawing"] = str(out / "best_cells.png")
    summary["reward_plot"] = str(plot_rewards(by_strategy, out / "rewards.png", cfg.SEARCH.BATCH_SIZE))
    return summary
