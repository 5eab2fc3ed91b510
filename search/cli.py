"""``nasnet-det search`` / ``tools/search_cifar.py``: run (or resume) an architecture search.

    python tools/search_cifar.py --config-file configs/search/smoke.yaml [--output-dir DIR] [--resume]
        [KEY VALUE ...]     e.g. SEARCH.STRATEGY ppo,random SEARCH.BUDGET 40 WORKERS.BACKEND ray
                            or SEARCH.STRATEGY oneshot (weight sharing, configs/search/oneshot_smoke.yaml)

Rerunning the same command resumes from the journal in the output directory. Exit codes: 0 with a usable
result, 1 when every child failed (no genotype to use), 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from nasnet_det.config import check_overrides
from nasnet_det.utils.errors import check_output_dir, exit_2_on_bad_input
from nasnet_det.utils.io import disk_full_errors
from search.config import load_cfg
from search.runner import SearchRunner
from search.session import JOURNAL_NAME
from search.strategies import resolve_strategies


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasnet-det search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", metavar="FILE", help="YAML config (see configs/search/)")
    p.add_argument("--output-dir", default="", help="overrides OUTPUT_DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="require an existing journal in the output dir and continue it (resuming also "
                        "happens without this flag whenever a journal exists)")
    g.add_argument("--fresh", action="store_true", help="delete the output dir's journal and checkpoints first")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE config overrides (after all the options above)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = _search(args)
    except KeyboardInterrupt:
        print("nasnet-det search: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if isinstance(summary, int):  # bad input, already reported
        return summary
    if summary.get("rank", 0) > 0:  # a follower of a distributed search: rank 0 prints the summary
        return 0
    short = {k: {kk: v[kk] for kk in ("evaluations", "ok", "failed", "best_reward", "first_batches_mean",
                                      "last_batches_mean", "collapsed")} for k, v in summary["strategies"].items()}
    print(json.dumps({"output_dir": summary["output_dir"], "stopped_early": summary["stopped_early"],
                      "strategies": short, "best": summary.get("best"), "problems": summary["problems"]}, indent=2))
    if not summary["usable"]:
        print(f"nasnet-det search: error: no usable result in {summary['output_dir']}: "
              + "; ".join(summary["problems"] or ["no child finished"]), file=sys.stderr)
        return 1
    return 0


@exit_2_on_bad_input
def _search(args: argparse.Namespace) -> dict | int:
    opts = check_overrides(args.opts, "nasnet-det search")
    if args.output_dir:
        opts += ["OUTPUT_DIR", args.output_dir]
    cfg = load_cfg(args.config_file or None, opts)
    out = check_output_dir(cfg.OUTPUT_DIR)
    if args.resume and not (out / JOURNAL_NAME).is_file():
        raise FileNotFoundError(f"--resume: no journal at {out / JOURNAL_NAME}")
    # SQLite (the journal) says only "database or disk is full": name OUTPUT_DIR
    with disk_full_errors(out, folder=True, key="OUTPUT_DIR"):
        return _run_search(cfg, out, args)


def _run_search(cfg, out: Path, args: argparse.Namespace) -> dict:
    try:
        if not any(cls.weight_sharing for cls in resolve_strategies(cfg.SEARCH.STRATEGY).values()):
            # The driver only runs the small controller (and the children with the inline backend): more
            # threads than the workers get would just contend with them for the cores. (A weight-sharing
            # strategy trains its supernet in this process: it keeps torch's threads.)
            torch.set_num_threads(max(1, cfg.WORKERS.THREADS_PER_WORKER))
        return SearchRunner(cfg, out, progress=not args.no_progress, fresh=args.fresh).run()
    except ImportError as e:  # a backend whose package is missing: a setting the user must change
        raise ValueError(str(e)) from None


if __name__ == "__main__":
    raise SystemExit(main())
