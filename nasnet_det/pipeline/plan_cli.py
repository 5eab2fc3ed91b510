"""``nasnet-det plan --config-file configs/pipeline/NAME.yaml [--gpus N] [--nodes M] [--json PATH] [KEY VALUE ...]``

What each stage of the pipeline will do, before a GPU-hour is spent: one table per stage (processes and devices,
per-device and global batch, effective learning rate and per image, steps / iterations, epochs, warm-up, AMP,
expected wall time and GPU-hours from the throughput the config states, the data found or missing), then the
checks, one line each, FAIL or WARN.

Without --gpus / --nodes the plan is for this machine at the config's own process counts, checked against its
GPUs. --gpus N plans for N GPUs per machine (one machine unless --nodes M): the training stages get N x M
processes, the search N x M GPUs for its children; this machine is then only warned about.

Exit codes: 0 no FAIL (WARN lines allowed), 1 at least one FAIL, 2 bad input (one error: line).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from nasnet_det.config import check_overrides
from nasnet_det.pipeline.config import load_pipeline_config
from nasnet_det.pipeline.plan import Machine, Target, scale_opts
from nasnet_det.pipeline.planner import make_plan
from nasnet_det.pipeline.runner import select_stages
from nasnet_det.pipeline.stages import stage_names
from nasnet_det.utils.errors import exit_2_on_bad_input
from nasnet_det.utils.io import atomic_write


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasnet-det plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="pipeline YAML (see configs/pipeline/)")
    p.add_argument("--gpus", type=_count, metavar="N", help="plan for N GPUs per machine (default: the config's "
                                                            "own process counts, on this machine)")
    p.add_argument("--nodes", type=_count, metavar="M", help="plan for M machines (default: 1 with --gpus, else the "
                                                             "config's own)")
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    stages = stage_names()
    p.add_argument("--from", dest="start", choices=stages, help="plan from this stage")
    p.add_argument("--until", choices=stages, help="plan up to this stage")
    p.add_argument("--only", choices=stages, help="plan just this stage")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the pipeline config (as "
                                                          "`nasnet-det pipeline` takes them)")
    return p


@exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    # fvcore and detectron2 call the deprecated torch.jit.script at import time; users can do nothing about it.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    args = build_parser().parse_args(argv)
    opts = check_overrides(args.opts, "nasnet-det plan")
    cfg = load_pipeline_config(args.config_file, [*opts, *scale_opts(args.gpus, args.nodes)])
    chosen = select_stages(args.start, args.until, args.only)
    plan = make_plan(cfg, chosen, Target(Machine.this_one(), args.gpus, args.nodes), args.config_file)
    print(plan.format())
    if args.json:
        atomic_write(Path(args.json), json.dumps(plan.as_dict(), indent=2) + "\n")
    return 1 if plan.failed else 0


if __name__ == "__main__":
    sys.exit(main())
