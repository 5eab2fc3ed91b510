#!/usr/bin/env python
"""Does the search search? PPO vs random search at equal budget.

1. Synthetic task (seconds per seed): reward = mean over the genotype's 20 ops of a fixed per-op score
   + noise (``search.reward.SyntheticOpReward``); random search averages ~0.5, the optimum is 1.0.
   PPO runs at three controller settings: the paper's (LR 0.00035, 100 units, plain advantages), the
   paper's with normalised advantages (the defaults of search/base_config.py), and tuned (LR 0.03, 32 units).
2. Tiny real run: children 1@4 trained a few steps on 16-px images of the CIFAR-10 subset
   (the package's real sample, ``nasnet_det/data/sample/cifar10_sample.npz``), reward = held-out accuracy.
   Far too small to separate the strategies reliably; it shows the whole pipeline on real data and reports the numbers.

ppo_first / ppo_last are the means of the first / last quarter of PPO's batch means (the summary's
``first_batches_mean`` / ``last_batches_mean``, see ``search.outputs.first_last_means``).

    python bench/search_vs_random.py [--seeds 5] [--budget 300] [--long-budget 2000] [--long-seeds 2]
        [--real-budget 24] [--skip-real] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nasnet_det.data.sample import cifar10_npz  # noqa: E402
from search.config import load_cfg  # noqa: E402
from search.reward import SyntheticOpReward  # noqa: E402
from search.runner import SearchRunner  # noqa: E402


def row(label: str, s: dict) -> str:  # the real run: ppo and random of one search
    # first/last: the summary's first/last quarter of the batch means (search.outputs.first_last_means)
    p, r = s["ppo"], s["random"]
    return (f"{label:<8} ppo_first={p['first_batches_mean']:.4f} ppo_last={p['last_batches_mean']:.4f} "
            f"ppo_best={p['best_reward']:.4f} random_mean={r['mean_reward']:.4f} "
            f"random_best={r['best_reward']:.4f} (ok {p['ok']}+{r['ok']}, failed {p['failed']}+{r['failed']})")


# Controller settings compared on the synthetic reward (name, overrides); each runs with random search
# beside it in one search (the strategies share the queue), or alone when the name says so.
SETTINGS = {
    "paper": ["CONTROLLER.LR", "0.00035", "CONTROLLER.HIDDEN", "100", "CONTROLLER.NORMALIZE_ADVANTAGE", "False"],
    "paper+norm": ["CONTROLLER.LR", "0.00035", "CONTROLLER.HIDDEN", "100", "CONTROLLER.NORMALIZE_ADVANTAGE", "True"],
    "tuned": ["CONTROLLER.LR", "0.03", "CONTROLLER.HIDDEN", "32", "CONTROLLER.NORMALIZE_ADVANTAGE", "True"],
}


def synthetic(seeds: int, budget: int, out: Path) -> None:
    print(f"== synthetic op-score reward: budget {budget} per strategy, batch 20, {seeds} seeds; PPO at the paper's "
          f"controller settings (LR 0.00035, 100 units, plain advantages), the same with normalised advantages "
          f"(the defaults), and tuned (LR 0.03, 32 units, normalised) ==")
    last = {name: [] for name in SETTINGS}
    first = {name: [] for name in SETTINGS}
    rands = []
    for seed in range(seeds):
        cells = []
        t0 = time.perf_counter()
        for name, opts in SETTINGS.items():
            strategies = "ppo,random" if name == "paper" else "ppo"
            cfg = load_cfg(None, ["SEARCH.STRATEGY", strategies, "SEARCH.BUDGET", str(budget), "SEARCH.BATCH_SIZE",
                                  "20", "SEARCH.SEED", str(seed), "WORKERS.BACKEND", "inline", *opts])
            s = SearchRunner(cfg, out / f"synthetic_{name}_{seed}", SyntheticOpReward(seed),
                             progress=False).run()["strategies"]
            first[name].append(s["ppo"]["first_batches_mean"])
            last[name].append(s["ppo"]["last_batches_mean"])
            cells.append(f"{name}: {s['ppo']['first_batches_mean']:.3f}->{s['ppo']['last_batches_mean']:.3f}")
            if "random" in s:
                rands.append(s["random"]["mean_reward"])
        print(f"seed {seed}  ppo first->last  " + "  ".join(cells) + f"  random_mean={rands[-1]:.3f}"
              f"  [{time.perf_counter() - t0:.0f}s]")
    for name in SETTINGS:
        wins = sum(l > r for l, r in zip(last[name], rands))
        print(f"mean  ppo[{name:<10}] first={np.mean(first[name]):.4f} last={np.mean(last[name]):.4f}  "
              f"last > random_mean in {wins}/{seeds} seeds")
    print(f"mean  random            mean={np.mean(rands):.4f}")


def long_paper(seeds: int, budget: int, out: Path) -> None:
    """The paper's learning rate is meant for 20,000 children (1,000 updates): give it more updates."""
    print(f"== the paper's controller settings with a longer budget: {budget} children ({budget // 20} updates), "
          f"{seeds} seeds ==")
    for name in ("paper", "paper+norm"):
        for seed in range(seeds):
            cfg = load_cfg(None, ["SEARCH.STRATEGY", "ppo", "SEARCH.BUDGET", str(budget), "SEARCH.BATCH_SIZE", "20",
                                  "SEARCH.SEED", str(seed), "WORKERS.BACKEND", "inline", *SETTINGS[name]])
            t0 = time.perf_counter()
            p = SearchRunner(cfg, out / f"long_{name}_{seed}", SyntheticOpReward(seed), progress=False).run()
            means = p["strategies"]["ppo"]["batch_means"]
            quarters = [np.mean(means[i * len(means) // 4:(i + 1) * len(means) // 4]) for i in range(4)]
            print(f"ppo[{name:<10}] seed {seed}: batch means by quarter of the run "
                  + " ".join(f"{q:.3f}" for q in quarters) + f"  [{time.perf_counter() - t0:.0f}s]")


def real(budget: int, out: Path, npz: Path) -> None:
    print(f"== tiny real CIFAR-10 run: {npz.name}, children 1@4, 16 px, 40 SGD steps, 2000 train / 500 held-out "
          f"images, budget {budget} per strategy, batch 4, 2 local worker processes ==")
    cfg = load_cfg(str(REPO / "configs/search/smoke.yaml"),
                   ["DATA.SOURCE", f"npz:{npz}", "SEARCH.STRATEGY", "ppo,random", "SEARCH.BUDGET", str(budget),
                    "SEARCH.BATCH_SIZE", "4", "CHILD.MAX_STEPS", "40"])
    t0 = time.perf_counter()
    s = SearchRunner(cfg, out / "real", progress=False).run()["strategies"]
    print(row("real", s), f"[{time.perf_counter() - t0:.1f}s]")
    print("ppo batch means:   ", " ".join(f"{m:.3f}" for m in s["ppo"]["batch_means"]))
    print("random batch means:", " ".join(f"{m:.3f}" for m in s["random"]["batch_means"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--real-budget", type=int, default=24)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--long-budget", type=int, default=2000, help="budget of the paper-settings runs (0: skip)")
    ap.add_argument("--long-seeds", type=int, default=2)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--npz", default=str(cifar10_npz()))
    ap.add_argument("--output-dir", default="", help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or tmp)
        if not args.skip_synthetic:
            synthetic(args.seeds, args.budget, out)
        if args.long_budget:
            long_paper(args.long_seeds, args.long_budget, out)
        if not args.skip_real:
            npz = Path(args.npz)
            if not npz.is_file():
                print(f"skipping the real run: {npz} does not exist (pass --npz PATH)")
            else:
                real(args.real_budget, out, npz)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
