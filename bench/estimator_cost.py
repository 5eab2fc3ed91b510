"""Seconds per cell of the cheap estimators (search/estimators) at the search's proxy network: each estimator
is built from the search config (defaults: ``MODEL.NASNET`` 1 @ f=8, ``CHILD.IMAGE_SIZE`` 32, 5-block cells,
minibatch ``SEARCH.ZERO_COST.BATCH_SIZE`` 64), prepared once (timed apart: the rank aggregates score their
reference cells there), then scores the same ``--cells`` uniformly drawn cells. Prints a markdown table.

    python bench/estimator_cost.py --threads 1 --cells 10 [--opts KEY VALUE ...]

Image content does not change the cost, so the images are synthetic (``DATA.SOURCE synthetic:N`` unless
``--opts`` names another source)."""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nasnet_det.search_space import SearchSpace  # noqa: E402
from search.config import load_cfg  # noqa: E402
from search.estimators import build_estimator  # noqa: E402
from search.reward import load_search_data  # noqa: E402

DEFAULT = ("params,madds,synflow,naswot,jacob_cov,grad_norm,snip,zico,meco,swap,swap_reg,az_nas,ensemble")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimators", default=DEFAULT, help="comma-separated registered estimators")
    ap.add_argument("--cells", type=int, default=10, help="uniformly drawn cells each estimator scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--opts", nargs="*", default=[], help="search config overrides, KEY VALUE ...")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_cfg(None, ["DATA.SOURCE", "synthetic:2000", "DATA.VAL_SIZE", "500", *args.opts])
    data = load_search_data(cfg)
    space = SearchSpace(int(cfg.SEARCH.NUM_BLOCKS))
    cells = [space.genotype(d) for d in space.sample(args.cells, torch.Generator().manual_seed(args.seed)).tolist()]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.cells} cells, MODEL.NASNET {cfg.MODEL.NASNET.NUM_CELLS} @ f={cfg.MODEL.NASNET.FILTERS}, "
          f"{cfg.CHILD.IMAGE_SIZE} px, B={cfg.SEARCH.NUM_BLOCKS}, minibatch {cfg.SEARCH.ZERO_COST.BATCH_SIZE}")
    print("| estimator | prepare (s) | s/cell mean | s/cell min-max |")
    print("| --- | --- | --- | --- |")
    for name in [n.strip() for n in args.estimators.split(",") if n.strip()]:
        est = build_estimator(name, cfg, key="--estimators")
        start = time.perf_counter()
        est.prepare(data if est.needs_data else None, args.seed)
        prepare_s = time.perf_counter() - start
        times = []
        for g in cells:
            start = time.perf_counter()
            est.score(g)
            times.append(time.perf_counter() - start)
        print(f"| `{name}` | {prepare_s:.2f} | {statistics.mean(times):.3f} | {min(times):.3f}-{max(times):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
