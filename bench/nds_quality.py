"""The search-quality bench against NDS (issue 30; ``bench/search_quality.py --truth nds:PATH``): the CPU
ground-truth protocol judged by how it ranks NDS's ImageNet results (``protocol``), every estimator's rank
correlation with NDS, raw and size-adjusted (``run --truth``), and each estimator used as the zero_cost
strategy's rule on NDS as a pool (best of K drawn cells against a random pick).

Size-adjusted = the rank correlation with the **residual** of NDS accuracy after a least-squares line on the
log of the NDS network's parameter count (:func:`nds.size_residual`): what is left of ImageNet accuracy once
size is accounted for."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nds import NDSCell, nds_network, size_residual
from quality_stats import rank_correlations
from quality_truth import BenchData, Budget, TruthCache, cfg_hash, genotype_key, ground_truth, search_cfg
from scipy import stats

from nasnet_det.utils.errors import BadInputError

SIZE_ADJUSTED = "size-adjusted: against the residual of NDS accuracy after a least-squares fit on log NDS params"


def correlations(scores: Sequence[float], cells: Sequence[NDSCell], seed: int = 0) -> dict[str, Any]:
    """Kendall tau and Spearman (bootstrap 95% CIs) of ``scores`` against the cells' NDS accuracy (``raw``) and
    against its residual after log params (``adjusted``)."""
    acc = [c.accuracy for c in cells]
    resid = size_residual(acc, [c.params for c in cells])
    return {"raw": rank_correlations(scores, acc, seed=seed), "adjusted": rank_correlations(scores, resid, seed=seed)}


def _fmt(c: Mapping[str, float], name: str = "kendall") -> str:
    return f"{c[name]:+.3f} [{c[f'{name}_lo']:+.3f}, {c[f'{name}_hi']:+.3f}]"


def describe(label: str, corr: Mapping[str, Mapping[str, float]]) -> str:
    r, a = corr["raw"], corr["adjusted"]
    return (f"{label:<24} raw: tau {_fmt(r)} rho {_fmt(r, 'spearman')} | size-adj.: tau {_fmt(a)} "
            f"rho {_fmt(a, 'spearman')}")


# --------------------------------------------------------------------------------------------- protocol
def protocol(sweeps: Mapping[str, Sequence[NDSCell]], budgets: Sequence[Budget], data: BenchData,
             cache: TruthCache, seed: int = 0, log: Callable[[str], None] = print,
             cached_only: bool = False) -> list[dict[str, Any]]:
    """Each sweep's cells (a fixed sample) trained alone at each budget (in the order given: list the cheap ones
    first, so an interrupted run has them whole; cached, resumable) and ranked against NDS: per budget and sweep,
    tau and rho raw and size-adjusted, and the median seconds per cell. ``cached_only``: train nothing, rank the
    cells the cache holds (an interrupted study's figures so far, not always the same cells at each budget; a
    budget or sweep with fewer than 3 is left out)."""
    out = []
    for b in budgets:
        for name, cells in sweeps.items():
            if cached_only:
                held = [(c, cache.get(c.genotype, b, data.key, seed)) for c in cells]
                cells = [c for c, e in held if e is not None]
                entries = [e for _, e in held if e is not None]
                if len(cells) < 3:
                    continue
                log(f"== protocol {b.label} on {name}: the {len(cells)} cells cached (training nothing)")
            else:
                log(f"== protocol {b.label} on {name}: {len(cells)} cells")
                entries = [ground_truth(cache, c.genotype, b, data, seed, log) for c in cells]
            acc = [e["accuracy"] for e in entries]
            res = {"budget": b.label, "sweep": name, "cells": len(cells), **correlations(acc, cells),
                   "seconds_per_cell": float(np.median([e["seconds"] for e in entries])),
                   "mean_accuracy": float(np.mean(acc))}
            log(describe(f"-> {b.label} {name}", res) + f"; {res['seconds_per_cell']:.1f} s/cell, "
                f"mean acc {res['mean_accuracy']:.3f}")
            out.append(res)
    return out


def nominal_cost(budget: str) -> int:
    """A budget's work, steps x pixels x N x f (what a cell's training costs up to a constant; the measured
    seconds follow the machine's load as much as the budget)."""
    b = Budget.parse(budget)
    return b.steps * b.image_size ** 2 * b.num_cells * b.filters


def best_budget(results: Sequence[Mapping[str, Any]], sweep: str, slack: float = 0.05) -> dict[str, Any]:
    """The budget the protocol should default to, chosen on ``sweep`` (the selection sweep; the other is held
    out): the cheapest (:func:`nominal_cost`, then seconds per cell) whose size-adjusted Kendall tau is within
    ``slack`` of the best one's."""
    rows = [r for r in results if r["sweep"] == sweep]
    if not rows:
        raise BadInputError(f"no protocol results on the selection sweep {sweep!r} (with --cached-only: fewer than "
                            "3 of its cells are trained at every budget); train them first")
    top = max(r["adjusted"]["kendall"] for r in rows)
    return min((r for r in rows if r["adjusted"]["kendall"] >= top - slack),
               key=lambda r: (nominal_cost(r["budget"]), r["seconds_per_cell"]))


# ------------------------------------------------------------------------------------------ estimators
def score_cells(names: Sequence[str], cfg_of: Callable[[NDSCell], Any], cells: Sequence[NDSCell], data: BenchData,
                sweep: str, cache: TruthCache, seed: int = 0, log: Callable[[str], None] = print
                ) -> dict[str, dict[str, Any]]:
    """Each estimator prepared on the search split and scored on every cell, in the config ``cfg_of(cell)``
    (the search's proxy network, or the NDS network's size); cells with the same config share one prepared
    estimator. Cached per estimator, sweep, configs, data and seed, so a rerun scores nothing again."""
    from search.estimators import build_estimator
    from search.supernet import UnscorableCellError

    cfgs = [cfg_of(c) for c in cells]
    hashes = [cfg_hash(c) for c in cfgs]
    cells_key = hashlib.sha1("".join(genotype_key(c.genotype) + h for c, h in zip(cells, hashes)).encode())
    out = {}
    for name in names:
        key = "nds-estimator|" + json.dumps({"name": name, "sweep": sweep, "data": data.key, "seed": seed,
                                             "cells": cells_key.hexdigest()[:16]})
        hit = cache.entries.get(key)
        if hit is None:
            scores: list[float | None] = [None] * len(cells)
            unscored: dict[str, str] = {}
            t0 = time.perf_counter()
            for h in dict.fromkeys(hashes):  # one prepared estimator per distinct config, in first-seen order
                group = [i for i, x in enumerate(hashes) if x == h]
                est = build_estimator(name, cfgs[group[0]], key="--estimators")
                est.prepare(data.search, seed)
                for i in group:
                    try:
                        scores[i] = float(est.score(cells[i].genotype))
                    except UnscorableCellError as e:  # a cell the supernet has no path for
                        unscored[cells[i].genotype.name] = str(e)
            hit = {"key": key, "kind": "nds-estimator", "budget": "", "seconds": 0.0, "scores": scores,
                   "unscored": unscored, "total_seconds": time.perf_counter() - t0}
            cache.put(hit)
        out[name] = hit
    return out


def evaluate_scores(name: str, hit: Mapping[str, Any], cells: Sequence[NDSCell], seed: int = 0,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    scored = [i for i, v in enumerate(hit["scores"]) if v is not None]
    corr = correlations([hit["scores"][i] for i in scored], [cells[i] for i in scored], seed)
    res = {"estimator": name, **corr, "n": len(scored), "seconds_per_cell": hit["total_seconds"] / max(1, len(scored)),
           "unscored": sorted(hit.get("unscored", {}))}
    log(describe(name, corr) + f"  {res['seconds_per_cell']:.2f} s/cell"
        + (f"  ({len(res['unscored'])} cells unscored)" if res["unscored"] else ""))
    return res


def with_nds_params(scores: Sequence[float | None], cells: Sequence[NDSCell]) -> list[float | None]:
    """A cell estimator combined with the NDS network's size (known before training, unlike the cell's worth):
    AZ-NAS's non-linear rank aggregation over the sweep's scored cells, log(rank / m) of the score plus that of
    the NDS params (ranks ascending, ties averaged; the reference code ranks a population the same way)."""
    idx = [i for i, s in enumerate(scores) if s is not None]
    m = len(idx)
    r_s = stats.rankdata([scores[i] for i in idx]) / m
    r_p = stats.rankdata([cells[i].params for i in idx]) / m
    out: list[float | None] = [None] * len(scores)
    for j, i in enumerate(idx):
        out[i] = float(np.log(r_s[j]) + np.log(r_p[j]))
    return out


# ------------------------------------------------------------------------------------------- best of K
def best_of_k(scores: Sequence[float | None], accuracy: Sequence[float], k: int, draws: int = 500,
              seed: int = 0) -> dict[str, float]:
    """The zero_cost strategy's rule on a pool: ``draws`` times, K cells drawn without replacement from the
    scored ones, the best-scored picked. Returns the mean true accuracy of the pick, of a random pick among the
    same K (their mean), and how often the pick beats a random pick of the same K: per draw the exact chance,
    the share of the K whose accuracy is below the pick's, a tie (the pick itself, or an equal accuracy)
    counting half; averaged over draws."""
    idx = np.array([i for i, s in enumerate(scores) if s is not None])
    s = np.array([scores[i] for i in idx], float)
    a = np.asarray(accuracy, float)[idx]
    k = min(k, len(idx))
    rng = np.random.default_rng([seed, k, 2])
    pick_acc, rand_acc, beats = [], [], []
    for _ in range(draws):
        drawn = rng.choice(len(idx), k, replace=False)
        pick = drawn[np.argmax(s[drawn])]
        pick_acc.append(a[pick])
        rand_acc.append(a[drawn].mean())
        beats.append(((a[drawn] < a[pick]).sum() + 0.5 * (a[drawn] == a[pick]).sum()) / k)
    return {"k": k, "draws": draws, "pick_mean": float(np.mean(pick_acc)), "random_mean": float(np.mean(rand_acc)),
            "beats_random": float(np.mean(beats)), "pool_best": float(a.max())}


def pool_table(scores: Mapping[str, Sequence[float | None]], cells: Sequence[NDSCell], ks: Sequence[int],
               draws: int, seed: int = 0, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`best_of_k` of every estimator at every K (the same draws for every estimator at one K)."""
    acc = [c.accuracy for c in cells]
    out = []
    for name, sc in scores.items():
        for k in ks:
            r = {"estimator": name, **best_of_k(sc, acc, k, draws, seed)}
            log(f"  {name:<16} K={r['k']:<4} pick {r['pick_mean']:.2f}%  random {r['random_mean']:.2f}%  "
                f"beats a random pick {r['beats_random']:.0%} of {draws} draws")
            out.append(r)
    return out


def nds_cfg_of(base: Any, nds_size: bool) -> Callable[[NDSCell], Any]:
    """The config a cell is scored in: the search's (``base``), or with ``nds_size`` the NDS network's width and
    depth mapped to ``MODEL.NASNET`` (:func:`nds.nds_network`)."""
    if not nds_size:
        return lambda cell: base
    memo: dict[tuple[int, int], Any] = {}

    def cfg_of(cell: NDSCell) -> Any:
        net = nds_network(cell, base.MODEL.NASNET)
        key = (net["NUM_CELLS"], net["FILTERS"])
        if key not in memo:
            cfg = base.clone()
            cfg.defrost()
            cfg.MODEL.NASNET.NUM_CELLS, cfg.MODEL.NASNET.FILTERS = key
            cfg.freeze()
            memo[key] = cfg
        return memo[key]

    return cfg_of


def sweep_name(path: Path) -> str:
    return path.stem


# ------------------------------------------------------------------------------------------------- main
def nds_main(args: Any, data: BenchData, cache: TruthCache, budgets: Sequence[Budget],
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """``protocol`` or ``run --truth nds:PATH`` of ``bench/search_quality.py`` (its parsed ``args``)."""
    from nds import load_nds, parse_truth, sample_cells

    paths = [parse_truth(t) for t in args.truth]
    sweeps = {sweep_name(p): load_nds(p) for p in paths}
    select = sweep_name(paths[0])  # the sweep settings are chosen on; the others are held out
    out: dict[str, Any] = {"data": data.description, "sweeps": {n: len(c) for n, c in sweeps.items()},
                           "selection_sweep": select, "size_adjustment": SIZE_ADJUSTED}
    if args.command == "protocol":
        n = 40 if args.nds_cells is None else args.nds_cells
        sample = {name: sample_cells(cells, n, args.cell_seed) for name, cells in sweeps.items()}
        out["protocol"] = protocol(sample, budgets, data, cache, 0, log, args.cached_only)
        best = best_budget(out["protocol"], select)
        out["best_budget"] = best["budget"]
        log(f"== cheapest budget within 0.05 of the best size-adjusted tau on {select}: {best['budget']} "
            f"(tau {best['adjusted']['kendall']:+.3f}, {best['seconds_per_cell']:.1f} s/cell)")
        return out
    from search.estimators import ESTIMATORS

    names = ([n.strip() for n in args.estimators.split(",") if n.strip()] if args.estimators
             else sorted(ESTIMATORS.names()))
    base = search_cfg(None, args.search_config or None, [*args.search_opts, *args.estimator_opts], data)
    net = base.MODEL.NASNET
    where = ("in the NDS network's width and depth (NUM_CELLS = round((depth - 2) / 3), FILTERS = width)"
             if args.nds_size else f"in the search's network {net.NUM_CELLS}@{net.FILTERS}")
    out.update(scored=f"{where} at {base.CHILD.IMAGE_SIZE} px", estimators={}, pools={})
    for name, cells in sweeps.items():
        cells = sample_cells(cells, args.nds_cells or 0, args.cell_seed)
        log(f"== {name}: {len(cells)} cells, estimators scored {where} at {base.CHILD.IMAGE_SIZE} px; {SIZE_ADJUSTED}")
        nds_params = correlations([c.params for c in cells], cells)
        log(describe("NDS params (baseline)", nds_params))
        hits = score_cells(names, nds_cfg_of(base, args.nds_size), cells, data,
                           f"{name}|nds_size={args.nds_size}", cache, args.cell_seed, log)
        res = [{"estimator": "nds_params", **nds_params, "n": len(cells), "seconds_per_cell": 0.0, "unscored": []}]
        res += [evaluate_scores(n, h, cells, args.cell_seed, log) for n, h in hits.items()]
        log(f"== {name}: each estimator + NDS params (rank aggregation over the sweep)")
        combined = {f"{n}+nds_params": {**h, "scores": with_nds_params(h["scores"], cells)}
                    for n, h in hits.items() if n != "params"}
        res += [evaluate_scores(n, h, cells, args.cell_seed, log) for n, h in combined.items()]
        out["estimators"][name] = res
        log(f"== {name} as a pool: best of K by each estimator against a random pick of the same K")
        scores = {"nds_params": [float(c.params) for c in cells],
                  **{n: h["scores"] for n, h in {**hits, **combined}.items()}}
        out["pools"][name] = pool_table(scores, cells, args.ks, args.draws, args.cell_seed, log)
    return out


def nds_rows(out: Mapping[str, Any], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for bench/results.json: per budget / estimator and sweep, size-adjusted Kendall tau against the NDS
    params baseline's (the protocol: against 0), and each estimator's best-of-100 pick against a random pick."""
    from _common import row

    rows = []
    for r in out.get("protocol", []):
        a = r["adjusted"]
        rows.append(row(f"search_quality_nds protocol {r['budget']} {r['sweep']}", "size-adj. tau", a["kendall"], 0.0,
                        "no ranking", True, raw_tau=r["raw"]["kendall"], ci=[a["kendall_lo"], a["kendall_hi"]],
                        seconds_per_cell=r["seconds_per_cell"], scored_cells=r["cells"], **settings))
    for sweep, ests in out.get("estimators", {}).items():
        base = ests[0]
        for e in ests[1:]:
            rows.append(row(f"search_quality_nds estimator {e['estimator']} {sweep}", "raw tau", e["raw"]["kendall"],
                            base["raw"]["kendall"], "NDS params", True, adjusted_tau=e["adjusted"]["kendall"],
                            adjusted_ci=[e["adjusted"]["kendall_lo"], e["adjusted"]["kendall_hi"]],
                            seconds_per_cell=e["seconds_per_cell"], scored_cells=e["n"], **settings))
    for sweep, pools in out.get("pools", {}).items():
        for p in pools:
            if p["k"] == max(q["k"] for q in pools):
                rows.append(row(f"search_quality_nds best-of-{p['k']} {p['estimator']} {sweep}", "pick acc %",
                                p["pick_mean"], p["random_mean"], "random pick", True,
                                beats_random=p["beats_random"], draws=p["draws"], **settings))
    return rows
