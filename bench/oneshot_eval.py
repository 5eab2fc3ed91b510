#!/usr/bin/env python
"""Does the weight-sharing search find anything? Three figures on the real CIFAR-10 sample, per seed:

1. Kendall tau-b between a cell's accuracy with the shared weights (supernet, whole held-out split) and its
   held-out accuracy when trained alone at the config's child budget (CHILD.*), for ``--cells`` random cells.
2. The found cell (``best_genotype.json`` of the search) trained alone vs ``--random`` random cells (the first
   ones of 1.) trained alone at the same budget and data: mean and std.
3. The search's wall time vs a PPO search that trains the same number of scored cells alone, estimated from
   the measured per-child training time (a full PPO run at this count would take too long here).

Each seed runs the whole search (``configs/search/oneshot_smoke.yaml`` by default) with SEARCH.SEED = seed.
Seeds can run as separate processes (``--seeds 1 --first-seed K --json out_K.json``) and be summarised with
``--summarize out_*.json``.

    python bench/oneshot_eval.py --data npz:PATH [--seeds 3] [--cells 16] [--random 8] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from nasnet_det.search_space import SearchSpace  # noqa: E402
from nasnet_det.space import Genotype  # noqa: E402
from search.config import load_cfg  # noqa: E402
from search.oneshot import DERIVE_NAME, SEARCH_NAME, OneShotSearch  # noqa: E402
from search.reward import train_child  # noqa: E402


def run_seed(config: str, opts: list[str], seed: int, cells: int, n_random: int, work: Path) -> dict:
    cfg = load_cfg(config, [*opts, "SEARCH.SEED", str(seed)])
    out = work / f"seed_{seed}"
    t0 = time.perf_counter()
    summary = OneShotSearch(cfg, out, progress=False, fresh=True).run()
    search_s = time.perf_counter() - t0
    scored = summary["strategies"][SEARCH_NAME]["evaluations"] + summary["strategies"][DERIVE_NAME]["evaluations"]
    found = Genotype.load(out / "best_genotype.json")

    search = OneShotSearch(cfg, out, progress=False)
    assert search.restore(), "the search left no checkpoint"
    from search.oneshot import load_search_data

    data = load_search_data(cfg)
    child, network = dict(cfg.CHILD), dict(cfg.MODEL.NASNET)
    gen = torch.Generator().manual_seed(10_000 + seed)
    space = SearchSpace(cfg.SEARCH.NUM_BLOCKS)
    randoms = [space.genotype(a) for a in space.sample(cells, gen).tolist()]
    supernet_acc, alone_acc, child_s = [], [], []
    for i, g in enumerate(randoms):
        supernet_acc.append(search.score(g, search.x_val, search.y_val))
        t = time.perf_counter()
        alone_acc.append(train_child(g, child, data, seed=seed * 1000 + i, network=network)["reward"])
        child_s.append(time.perf_counter() - t)
        print(f"  seed {seed} cell {i:2d}: supernet {supernet_acc[-1]:.3f}  alone {alone_acc[-1]:.3f}  "
              f"[{child_s[-1]:.0f}s]", flush=True)
    found_supernet = search.score(found, search.x_val, search.y_val)
    found_alone = train_child(found, child, data, seed=seed * 1000 + 999, network=network)["reward"]
    res = {"seed": seed, "search_seconds": search_s, "scored_cells": scored,
           "tau": float(stats.kendalltau(supernet_acc, alone_acc).statistic),  # tau-b, ties as scipy counts them
           "supernet_acc": supernet_acc, "alone_acc": alone_acc,
           "found_supernet": found_supernet, "found_alone": found_alone,
           "random_alone": alone_acc[:n_random], "child_seconds_mean": float(np.mean(child_s)),
           "found_genotype": found.to_dict()}
    print(f"seed {seed}: tau={res['tau']:+.3f}  found alone {found_alone:.3f} (supernet {found_supernet:.3f})  "
          f"random alone {np.mean(res['random_alone']):.3f}+-{np.std(res['random_alone']):.3f}  "
          f"search {search_s:.0f}s for {scored} scored cells, child {res['child_seconds_mean']:.1f}s", flush=True)
    return res


def summarize(results: list[dict], workers: int) -> None:
    taus = [r["tau"] for r in results]
    found = [r["found_alone"] for r in results]
    rand = [a for r in results for a in r["random_alone"]]
    print(f"\n== {len(results)} seeds ==")
    print(f"(1) Kendall tau (supernet vs alone, {len(results[0]['alone_acc'])} random cells per seed): "
          + ", ".join(f"{t:+.3f}" for t in taus) + f"  mean {np.mean(taus):+.3f}")
    print(f"(2) found cell alone: {np.mean(found):.4f} +- {np.std(found):.4f} ({', '.join(f'{f:.3f}' for f in found)})"
          f";  random cells alone: {np.mean(rand):.4f} +- {np.std(rand):.4f} ({len(rand)} cells); found beats the "
          f"mean of its seed's random cells in {sum(f > np.mean(r['random_alone']) for f, r in zip(found, results))}"
          f"/{len(results)} seeds, their best in "
          f"{sum(f > max(r['random_alone']) for f, r in zip(found, results))}/{len(results)}")
    for r in results:
        ppo_serial = r["scored_cells"] * r["child_seconds_mean"]
        print(f"(3) seed {r['seed']}: one-shot search {r['search_seconds']:.0f}s for {r['scored_cells']} scored cells; "
              f"PPO training them alone ~{ppo_serial:.0f}s serial (measured {r['child_seconds_mean']:.1f}s/child), "
              f"~{ppo_serial / workers:.0f}s with {workers} workers -> ratio "
              f"{ppo_serial / r['search_seconds']:.1f}x / {ppo_serial / workers / r['search_seconds']:.1f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs/search/oneshot_smoke.yaml"))
    p.add_argument("--data", default="", help="DATA.SOURCE override, e.g. npz:/path/cifar10-subset.npz")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--cells", type=int, default=16)
    p.add_argument("--random", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="PPO workers assumed in estimate (3)")
    p.add_argument("--json", default="", help="write the per-seed results here")
    p.add_argument("--summarize", nargs="*", default=None, help="only summarise these --json files")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    if args.summarize:
        summarize([r for f in args.summarize for r in json.loads(Path(f).read_text())], args.workers)
        return 0
    torch.set_num_threads(1)
    opts = list(args.opts) + (["DATA.SOURCE", args.data] if args.data else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            results.append(run_seed(args.config, opts, seed, args.cells, args.random, Path(tmp)))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    summarize(results, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
