#!/usr/bin/env python
"""One protocol by which every search strategy and every cheap estimator is judged (issue 19).

Ground truth: stand-alone training (``search.reward.train_child``) of a fixed set of cells at one budget
(SGD steps, image size, N@f, seeds) -- NASNet-A, ``--cells`` random cells whose parameter counts are within
``--size-tolerance`` (30%) of NASNet-A's at the same N@f (so size does not decide), and each strategy's found
cell -- scored on a held-out split of ``--holdout`` images that no search and no estimator ever sees (or on
``--test NPZ``, a separate test set, when given). Every trained cell's accuracy is cached on disk
(``--cache``, one JSON line per cell, keyed by genotype, budget, data and seed): nothing is trained twice
and an interrupted run resumes where it stopped.

Subcommands:

* ``budget``: for each ``--budgets`` setting (``STEPS@SIZEpx:N@f``, e.g. ``400@16px:1@8``), train NASNet-A and
  ``--noise-cells`` random cells with ``--seeds`` seeds and every random cell with one, and report NASNet-A's
  margin over the random cells' mean against the seed noise (pooled std of one cell across seeds). The
  first budget at which the margin exceeds the noise is the one to judge by.
* ``run``: at ``--budget``, every estimator registered in ``search.estimators`` (Kendall tau and Spearman
  against the ground truth of the random cells + NASNet-A, bootstrap 95% CIs, seconds per cell), and every
  strategy of ``--strategies`` (its search on the search split, its found cell's ground-truth accuracy, its
  rank among the random cells and against NASNet-A, the search's seconds). Writes its section to
  bench/results.json (``--results``) for bench/RESULTS.md.
* ``run --truth nds:PATH`` (issue 30; bench/nds_quality.py): NDS's ImageNet results as the truth instead
  (``PATH`` any NDS-format sweep, e.g. ``../shared/data/nds/ENAS_in.json``; repeat ``--truth`` for more, the
  first being the sweep settings are chosen on): every estimator scored on every network's cell as the search
  would (its config's ``MODEL.NASNET`` and ``CHILD.IMAGE_SIZE``; ``--nds-size``: in the NDS network's own width
  and depth) -- Kendall tau and Spearman with bootstrap CIs, raw and size-adjusted (against the residual of NDS
  accuracy after a least-squares fit on log NDS params), seconds per cell -- and each estimator as the
  zero_cost strategy's rule on the sweep as a pool (best of ``--ks`` drawn cells, ``--draws`` draws) against a
  random pick. Scores are cached like the ground truth.
* ``protocol --truth nds:PATH ...``: the CPU ground truth judged by NDS: ``--nds-cells`` (40) cells of each
  sweep (a fixed sample) trained alone at each ``--budgets`` setting, ranked against NDS (tau, rho, raw and
  size-adjusted, CIs) with seconds per cell; the cheapest budget within 0.05 of the best size-adjusted tau on
  the first sweep is the one to judge by.

    python bench/search_quality.py budget --data npz:../shared/data/cifar10-subset.npz \\
        --budgets 300@16px:1@8 1000@16px:1@8
    python bench/search_quality.py run --budget 1000@16px:1@8 --strategies zero_cost,predictor [...]

Full CIFAR-10 on one GPU (docs/search.md): ``--data folder:datasets/cifar10 --holdout 10000
--test npz:cifar10-test.npz --budget 15000@32px:2@16 --seeds 3`` (about 20 epochs of 40,000 images).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/_common.py puts the repository on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS_JSON, record  # noqa: E402
from quality_stats import (  # noqa: E402,F401  (re-exported: the bench's statistics)
    _kendall_tau_b,
    _spearman_rho,
    pooled_seed_std,
    rank_among,
    rank_correlations,
)
from quality_truth import (  # noqa: E402,F401  (re-exported: the bench's ground truth)
    BenchData,
    Budget,
    TruthCache,
    cfg_hash,
    genotype_key,
    ground_truth,
    load_bench_data,
    param_count,
    search_cfg,
    size_matched_cells,
    within_size,
)

from nasnet_det.genotypes import NASNET_A  # noqa: E402
from nasnet_det.space import Genotype  # noqa: E402
from nasnet_det.utils.errors import BadInputError, exit_2_on_bad_input  # noqa: E402

SCRIPT = "search_quality"
NUM_BLOCKS = 5


# ---------------------------------------------------------------------------------------- budget study
def budget_study(budgets: Sequence[Budget], data: BenchData, cache: TruthCache, cells: int, seeds: int,
                 noise_cells: int, tolerance: float, cell_seed: int = 0,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """For each budget: NASNet-A's margin over the size-matched random cells' mean against the seed noise."""
    out = []
    for b in budgets:
        log(f"== budget {b.label} (batch {b.batch_size}, LR {b.lr}): NASNet-A and {noise_cells} random cells x "
            f"{seeds} seeds, {cells} random cells x 1 seed; {data.description}")
        randoms = size_matched_cells(cells, b.network(), tolerance, cell_seed)
        nas = [ground_truth(cache, NASNET_A, b, data, s, log)["accuracy"] for s in range(seeds)]
        per_cell = {"NASNet-A": nas}
        for g, _ in randoms[:noise_cells]:
            per_cell[g.name] = [ground_truth(cache, g, b, data, s, log)["accuracy"] for s in range(seeds)]
        rand = [ground_truth(cache, g, b, data, 0, log)["accuracy"] for g, _ in randoms]
        noise = pooled_seed_std(per_cell)
        margin = float(np.mean(nas) - np.mean(rand))
        seconds = [e["seconds"] for e in cache.entries.values() if e["budget"] == b.label]
        res = {"budget": b.label, "nasnet_a_mean": float(np.mean(nas)), "nasnet_a_seeds": nas,
               "random_mean": float(np.mean(rand)), "random_std": float(np.std(rand, ddof=1)),
               "random": rand, "margin": margin, "seed_noise": noise, "separates": bool(margin > noise),
               "nasnet_a_rank_seed0": rank_among(nas[0], rand), "cells": len(rand),
               "seconds_per_cell": float(np.median(seconds)) if seconds else float("nan"),
               "params_nasnet_a": param_count(NASNET_A, b.network()),
               "params_random": [p for _, p in randoms]}
        log(f"-> {b.label}: NASNet-A {res['nasnet_a_mean']:.4f} ({', '.join(f'{a:.3f}' for a in nas)}), random "
            f"{res['random_mean']:.4f} +- {res['random_std']:.4f} ({len(rand)} cells); margin {margin:+.4f} vs seed "
            f"noise {noise:.4f}: {'SEPARATES' if res['separates'] else 'does not separate'}; NASNet-A seed 0 ranks "
            f"{res['nasnet_a_rank_seed0']}/{len(rand) + 1}; {res['seconds_per_cell']:.0f} s/cell")
        out.append(res)
    return out


# ------------------------------------------------------------------------------------------ the cell set
@dataclass
class CellTruth:
    """The fixed cell set at one budget: NASNet-A's accuracy per seed and each random cell's (seed 0, plus
    every seed for the first ``noise_cells``); ``truth`` is each cell's mean over its seeds."""

    genotypes: list[Genotype]      # NASNet-A first, then the random cells
    accuracies: list[list[float]]  # per cell, per seed
    seconds_per_cell: float

    @property
    def truth(self) -> list[float]:
        return [float(np.mean(a)) for a in self.accuracies]

    @property
    def names(self) -> list[str]:
        return ["NASNet-A", *(f"random cell {i}" for i in range(1, len(self.genotypes)))]

    @property
    def random_seed0(self) -> list[float]:
        return [a[0] for a in self.accuracies[1:]]


def cell_truth(budget: Budget, data: BenchData, cache: TruthCache, cells: int, seeds: int, noise_cells: int,
               tolerance: float, cell_seed: int = 0, log: Callable[[str], None] = print) -> CellTruth:
    randoms = [g for g, _ in size_matched_cells(cells, budget.network(), tolerance, cell_seed)]
    genotypes = [NASNET_A, *randoms]
    acc, secs = [], []
    for i, g in enumerate(genotypes):
        n_seeds = seeds if i <= noise_cells else 1
        entries = [ground_truth(cache, g, budget, data, s, log) for s in range(n_seeds)]
        acc.append([e["accuracy"] for e in entries])
        secs += [e["seconds"] for e in entries]
    return CellTruth(genotypes, acc, float(np.median(secs)))



def evaluate_estimators(names: Sequence[str], cfg: Any, data: BenchData, cells: CellTruth, seed: int = 0,
                        cache: TruthCache | None = None,
                        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each estimator prepared on the search split (never the holdout) and scored on every cell of the set:
    rank correlations with the ground truth (bootstrap 95% CIs) and seconds per cell (its preparation
    spread over the cells, plus scoring). With ``cache``, each estimator's scores and seconds are kept there
    (keyed by estimator, config, data, seed and the cells), so a rerun does not score again."""
    from search.estimators import build_estimator
    from search.supernet import UnscorableCellError

    cache = cache or TruthCache(None)
    cell_keys = [genotype_key(g) for g in cells.genotypes]
    out = []
    for name in names:
        key = "estimator|" + json.dumps({"name": name, "cfg": cfg_hash(cfg), "data": data.key, "seed": seed,
                                         "cells": hashlib.sha1("".join(cell_keys).encode()).hexdigest()[:16]})
        hit = cache.entries.get(key)
        if hit is None:
            est = build_estimator(name, cfg, key="--estimators")
            t0 = time.perf_counter()
            est.prepare(data.search, seed)
            prep = time.perf_counter() - t0
            scores, unscored = [], {}
            for i, g in enumerate(cells.genotypes):
                try:
                    scores.append(float(est.score(g)))
                except UnscorableCellError as e:  # a valid cell its supernet has no path for (any other error stops)
                    scores.append(None)
                    unscored[cells.names[i]] = str(e)
            hit = {"key": key, "kind": "estimator", "budget": "", "seconds": 0.0, "scores": scores,
                   "unscored": unscored, "prepare_seconds": prep, "total_seconds": time.perf_counter() - t0}
            cache.put(hit)
        scores, prep, unscored = hit["scores"], hit["prepare_seconds"], hit.get("unscored", {})
        scored = [i for i, v in enumerate(scores) if v is not None]
        corr = rank_correlations([scores[i] for i in scored], [cells.truth[i] for i in scored], seed=seed)
        res = {"estimator": name, **corr, "seconds_per_cell": hit["total_seconds"] / len(scored),
               "prepare_seconds": prep, "scores": scores, "unscored": sorted(unscored)}
        log(f"  {name:<12} kendall {corr['kendall']:+.3f} [{corr['kendall_lo']:+.3f}, {corr['kendall_hi']:+.3f}]  "
            f"spearman {corr['spearman']:+.3f} [{corr['spearman_lo']:+.3f}, {corr['spearman_hi']:+.3f}]  "
            f"{res['seconds_per_cell']:.2f} s/cell (prepare {prep:.1f} s)"
            + "".join(f"\n    cannot score {c}: {why}" for c, why in sorted(unscored.items())))
        out.append(res)
    return out


# ------------------------------------------------------------------------------------------- strategies
STRATEGY_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?:\[(?P<opts>[^\[\]]*)\])?$")


def parse_strategies(text: str) -> dict[str, tuple[str, list[str]]]:
    """``--strategies``: comma-separated ``NAME`` or ``NAME[KEY=VALUE;KEY=VALUE]`` (a strategy with config
    overrides of its own, e.g. ``zero_cost[SEARCH.ZERO_COST.PROXY=params]``) -> {entry: (name, opts)}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for entry in (e.strip() for e in re.split(r",(?![^\[]*\])", text)):
        if not entry:
            continue
        m = STRATEGY_SPEC.match(entry)
        pairs = [p.strip() for p in (m.group("opts") or "").split(";") if p.strip()] if m else []
        if m is None or any(p.count("=") != 1 or p.startswith("=") for p in pairs):
            raise BadInputError(f"--strategies entry {entry!r}: expected NAME or NAME[KEY=VALUE;KEY=VALUE]")
        out[entry] = (m.group("name"), [x for p in pairs for x in p.split("=")])
    return out


def run_search(strategy: str, cfg: Any, data: BenchData, out_dir: Path) -> tuple[Genotype, float]:
    """One search of ``strategy`` on the search split: (its found cell, wall seconds of this run). An
    interrupted search in ``out_dir`` (same config) resumes from its journal / checkpoint."""
    from search.reward import ChildEvaluator
    from search.runner import SearchRunner
    from search.strategies import resolve_strategies

    cls = resolve_strategies(strategy)[strategy]
    t0 = time.perf_counter()
    if cls.weight_sharing:
        SearchRunner(cfg, out_dir, progress=False, data=data.search).run()
        found = out_dir / "best_genotype.json"
    else:
        evaluator = ChildEvaluator(dict(cfg.CHILD), data.search, dict(cfg.MODEL.NASNET))
        SearchRunner(cfg, out_dir, evaluator=evaluator, progress=False).run()
        found = out_dir / f"best_genotype_{strategy}.json"
    if not found.is_file():
        raise RuntimeError(f"the {strategy} search left no {found.name} in {out_dir} (no child finished?)")
    return Genotype.load(found), time.perf_counter() - t0


def evaluate_strategies(strategies: Sequence[str], search_seeds: Sequence[int], budget: Budget,
                        cfg_of: Callable[[str, int], Any], data: BenchData, cache: TruthCache, cells: CellTruth,
                        work: Path, log: Callable[[str], None] = print,
                        on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Each strategy searched once per seed; its found cell trained alone at ``budget`` (seed 0, like the
    random cells) and ranked among the random cells and against NASNet-A (seed 0)."""
    rand = cells.random_seed0
    mean, std = float(np.mean(rand)), float(np.std(rand, ddof=1))
    nas = cells.accuracies[0][0]
    out = []
    for strategy in strategies:
        for seed in search_seeds:
            cfg = cfg_of(strategy, seed)
            key = {"strategy": strategy, "seed": seed, "data": data.key, "cfg": cfg_hash(cfg)}
            skey = "search|" + json.dumps(key, sort_keys=True)
            hit = cache.entries.get(skey)
            if hit is None:
                log(f"  searching: {strategy} seed {seed}")
                name = str(cfg.SEARCH.STRATEGY)
                found, secs = run_search(name, cfg, data, work / f"{name}_{seed}_{key['cfg']}")
                hit = {"key": skey, "kind": "search", "budget": "", "genotype": found.to_dict(),
                       "search_seconds": round(secs, 1), "seconds": 0.0}
                cache.put(hit)
            found = Genotype.from_dict(hit["genotype"])
            acc = ground_truth(cache, found, budget, data, 0, log)["accuracy"]
            res = {"strategy": strategy, "seed": seed, "accuracy": acc, "search_seconds": hit["search_seconds"],
                   "rank_among_random": rank_among(acc, rand), "of": len(rand) + 1, "random_mean": mean,
                   "random_std": std,
                   "z_over_random": (acc - mean) / std if std > 0 else float("nan"),
                   "at_or_above_nasnet_a": bool(acc >= nas), "genotype": found.to_dict()}
            log(f"  {strategy} seed {seed}: found cell {acc:.4f} (random {mean:.4f} +- {std:.4f}, "
                f"z {res['z_over_random']:+.2f}, rank {res['rank_among_random']}/{res['of']}, NASNet-A {nas:.4f}); "
                f"search {hit['search_seconds']:.0f} s")
            out.append(res)
            if on_result is not None:
                on_result(res)
    return out


def result_rows(study: Sequence[Mapping[str, Any]], estimators: Sequence[Mapping[str, Any]],
                strategies: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The section's rows for bench/results.json (bench/_common.row): the budget study (NASNet-A's margin
    against the seed noise), each estimator's Kendall tau against the params baseline's, each strategy's
    found cell against the random cells' mean."""
    from _common import row

    rows = []
    for b in study:
        rows.append(row(f"{SCRIPT} budget {b['budget']}", "NASNet-A margin", b["margin"], b["seed_noise"],
                        "seed noise (std)", True, **settings))
    base = next((e for e in estimators if e["estimator"] == "params"), None)
    for e in estimators:
        rows.append(row(f"{SCRIPT} estimator {e['estimator']}", "kendall tau", e["kendall"],
                        base["kendall"] if base else float("nan"), "params (size baseline)", True,
                        kendall_ci=[e["kendall_lo"], e["kendall_hi"]], spearman=e["spearman"], scored_cells=e["n"],
                        unscored=e.get("unscored", []),
                        spearman_ci=[e["spearman_lo"], e["spearman_hi"]], seconds_per_cell=e["seconds_per_cell"],
                        **settings))
    for s in strategies:
        rows.append(row(f"{SCRIPT} strategy {s['strategy']} seed {s['seed']}", "found cell acc", s["accuracy"],
                        s["random_mean"], "random cells' mean", True, rank=f"{s['rank_among_random']}/{s['of']}",
                        z_over_random=s["z_over_random"], at_or_above_nasnet_a=s["at_or_above_nasnet_a"],
                        search_seconds=s["search_seconds"], **settings))
    return rows


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=("budget", "run", "protocol"),
                   help="run (default, what make bench runs), budget, or protocol (with --truth nds:PATH)")
    p.add_argument("--data", default="npz:builtin", help="data source (default: the embedded 2,000-image sample)")
    p.add_argument("--holdout", type=int, default=500, help="images held out for the ground truth")
    p.add_argument("--search-val", type=int, default=300, help="of the rest, the search's own val split")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--test", default="", help="score the ground truth on this NPZ instead of the holdout")
    p.add_argument("--budgets", nargs="*", default=["300@16px:1@8"], help="budget study settings")
    p.add_argument("--budget", default="100@16px:1@8",
                   help="the ground truth's budget for `run` (default: the cheapest that ranked NDS ENAS_in best in "
                        "`protocol`, size-adjusted Kendall tau 0.247 on 40 cells, 0.055 on held-out PNAS_in; "
                        "docs/search.md)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--cells", type=int, default=16, help="size-matched random cells")
    p.add_argument("--size-tolerance", type=float, default=0.3)
    p.add_argument("--cell-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--noise-cells", type=int, default=2, help="random cells also trained with every seed")
    p.add_argument("--cache", default="output/bench/search_quality.jsonl",
                   help="ground-truth cache (JSON lines; resumable)")
    p.add_argument("--json", default="", help="also write the figures here")
    p.add_argument("--results", default=str(RESULTS_JSON), help="results file to write the section to ('' : none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the ground truth trains (cpu, cuda)")
    p.add_argument("--estimators", default="", help="comma-separated (default: every registered estimator)")
    p.add_argument("--strategies", default="",
                   help="comma-separated strategies to search with and judge; NAME[KEY=VALUE;...] adds overrides "
                        "of its own, e.g. zero_cost[SEARCH.ZERO_COST.PROXY=params]")
    p.add_argument("--search-seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--search-config", default="", help="search config of the estimators and strategies")
    p.add_argument("--search-opts", nargs="*", default=[], help="KEY VALUE overrides of the search config")
    p.add_argument("--estimator-opts", nargs="*", default=[],
                   help="KEY VALUE overrides for the estimators only (e.g. the supernets' ONESHOT.* budget)")
    p.add_argument("--truth", action="append", default=[],
                   help="nds:PATH, an NDS-format sweep (repeatable; the first is the selection sweep, the others held "
                        "out): `run` judges every estimator against it and on it as a pool; `protocol` the budgets")
    p.add_argument("--nds-cells", type=int, default=None,
                   help="a fixed seeded sample of each sweep (--cell-seed); default 40 for protocol, all for run")
    p.add_argument("--nds-size", action="store_true",
                   help="score each NDS cell in its own network's size (N = round((depth - 2) / 3), f = width), "
                        "not the search's network")
    p.add_argument("--cached-only", action="store_true",
                   help="protocol: train nothing, rank the cells the cache holds (an interrupted study so far)")
    p.add_argument("--ks", type=int, nargs="*", default=[10, 50, 100], help="pool draw sizes K (run --truth)")
    p.add_argument("--draws", type=int, default=500, help="seeded draws per K (run --truth)")
    p.add_argument("--work-dir", default="", help="keep the searches' outputs here (default: a temporary folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_bench_data(args.data, args.holdout, args.search_val, args.split_seed, args.test)
    cache = TruthCache(args.cache)
    settings = {"data": data.description, "cells": args.cells, "size_tolerance": args.size_tolerance,
                "batch_size": args.batch_size, "lr": args.lr, "torch_threads": args.threads}
    out: dict[str, Any] = {"data": data.description, "budget_study": [], "estimators": [], "strategies": []}

    def write() -> None:
        """The figures so far (after each phase and each strategy's search: an interrupt keeps them)."""
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        if args.results:
            study = out["budget_study"]
            notes = [data.description, f"ground truth: {args.seeds} seeds for NASNet-A and {args.noise_cells} "
                     f"random cells (seed noise), 1 for the others; random cells within {args.size_tolerance:.0%} "
                     f"of NASNet-A's parameters; {study[-1]['seconds_per_cell']:.0f} s per cell at "
                     f"{study[-1]['budget']}"]
            if out.get("search_opts") is not None:
                notes.append(f"searches: {args.search_config or 'search defaults'} + {' '.join(args.search_opts)}")
            record(SCRIPT, result_rows(study, out["estimators"], out["strategies"], settings), notes=notes,
                   path=Path(args.results))

    budgets = [Budget.parse(b, args.batch_size, args.lr, args.device)
               for b in (args.budgets if args.command in ("budget", "protocol") else [args.budget])]
    if args.command == "protocol" and not args.truth:
        raise BadInputError("protocol: expected --truth nds:PATH (one or more NDS-format sweeps)")
    if args.truth:
        from nds_quality import nds_main, nds_rows

        out = nds_main(args, data, cache, budgets)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        if args.results:
            nds_settings = {k: v for k, v in settings.items() if k not in ("cells", "size_tolerance")}
            record(f"{SCRIPT}_nds_{args.command}", nds_rows(out, nds_settings), notes=[data.description],
                   path=Path(args.results))
        return 0
    out["budget_study"] = budget_study(budgets, data, cache, args.cells, args.seeds, args.noise_cells,
                                       args.size_tolerance, args.cell_seed)
    if args.command == "run":
        import tempfile

        from search.estimators import ESTIMATORS

        budget = budgets[0]
        cells = cell_truth(budget, data, cache, args.cells, args.seeds, args.noise_cells, args.size_tolerance,
                           args.cell_seed)
        rand = cells.random_seed0
        out.update(nasnet_a_seed0=cells.accuracies[0][0], random_seed0=rand, search_config=args.search_config,
                   search_opts=args.search_opts)
        names = ([n.strip() for n in args.estimators.split(",") if n.strip()] if args.estimators
                 else sorted(ESTIMATORS.names()))
        cfg = search_cfg(budget, args.search_config or None, [*args.search_opts, *args.estimator_opts], data)
        print(f"== estimators at {budget.label} ({len(cells.genotypes)} cells: NASNet-A + {args.cells} random)")
        out["estimators"] = evaluate_estimators(names, cfg, data, cells, args.cell_seed, cache)
        write()
        specs = parse_strategies(args.strategies)
        names = list(specs)
        if names:
            print(f"== strategies {', '.join(names)}, search seeds {args.search_seeds}")

            def cfg_of(entry: str, seed: int) -> Any:
                strategy, opts = specs[entry]
                return search_cfg(budget, args.search_config or None,
                                  [*args.search_opts, *opts, "SEARCH.STRATEGY", strategy, "SEARCH.SEED", str(seed)],
                                  data)

            def found(result: dict[str, Any]) -> None:
                out["strategies"].append(result)
                write()

            with tempfile.TemporaryDirectory() as tmp:
                evaluate_strategies(names, args.search_seeds, budget, cfg_of, data, cache, cells,
                                    Path(args.work_dir or tmp), on_result=found)
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_2_on_bad_input(main)())  # bad input: one "error:" line, exit 2
