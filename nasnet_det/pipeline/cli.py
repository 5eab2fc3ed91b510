"""``nasnet-det pipeline --config-file configs/pipeline/NAME.yaml [--from S] [--until S] [--only S] [KEY VALUE ...]``

Runs search -> select -> cifar (optional) -> pretrain -> detect -> evaluate -> report into OUTPUT_DIR. Rerun
the same command after an interruption or a failure: finished stages are skipped, the interrupted one resumes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from nasnet_det.config import check_overrides
from nasnet_det.engine.process import Terminated, sigterm_as_interrupt
from nasnet_det.pipeline.config import load_pipeline_config
from nasnet_det.pipeline.runner import Pipeline, select_stages
from nasnet_det.pipeline.stages import stage_names
from nasnet_det.utils.errors import exit_2_on_bad_input


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasnet-det pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="pipeline YAML (see configs/pipeline/)")
    p.add_argument("--output-dir", default="", help="overrides OUTPUT_DIR")
    stages = stage_names()
    p.add_argument("--from", dest="start", choices=stages, help="start at this stage (earlier ones must be done)")
    p.add_argument("--until", choices=stages, help="stop after this stage")
    p.add_argument("--only", choices=stages, help="run just this stage")
    p.add_argument("--force", action="store_true",
                   help="rerun the selected stages from scratch even when finished and unchanged")
    p.add_argument("--quiet", action="store_true", help="only the pipeline's own lines (stage logs: stage.log)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the pipeline config")
    return p


@exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    # fvcore and detectron2 call the deprecated torch.jit.script at import time; users can do nothing about it.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    args = build_parser().parse_args(argv)
    opts = check_overrides(args.opts, "nasnet-det pipeline")
    if args.output_dir:
        opts += ["OUTPUT_DIR", args.output_dir]
    cfg = load_pipeline_config(args.config_file, opts)
    stages = select_stages(args.start, args.until, args.only)
    try:
        with sigterm_as_interrupt():  # a scheduler's stop is handled as Ctrl-C is
            Pipeline(cfg, quiet=args.quiet, config_file=args.config_file).run(stages, force=args.force)
    except Terminated:
        print("nasnet-det pipeline: stopped by SIGTERM; rerun the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("nasnet-det pipeline: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
