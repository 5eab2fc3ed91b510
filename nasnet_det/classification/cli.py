"""Command line: ``nasnet-det train --config-file X.yaml [--output-dir D] [--resume | --no-resume] [KEY VALUE ...]``
and ``nasnet-det train --export-backbone CHECKPOINT OUT``.

Works under ``torchrun`` (one process per GPU); only rank 0 logs and writes files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from nasnet_det.classification.config import load_config
from nasnet_det.config import check_overrides
from nasnet_det.utils.errors import check_output_dir, exit_2_on_bad_input
from nasnet_det.utils.io import disk_full_errors


def build_parser(prog: str = "nasnet-det train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Train a NASNet classifier (CIFAR-10 final training or ImageNet pretraining). "
        "Launch with torchrun --nproc-per-node G for multi-GPU / multi-node DDP.")
    p.add_argument("--config-file", help="YAML config (see configs/train/)")
    p.add_argument("--output-dir", help="overrides OUTPUT_DIR")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="resume from OUTPUT_DIR's last checkpoint, failing if there is none (without "
                       "either flag a run resumes when a checkpoint exists: TRAIN.AUTO_RESUME)")
    group.add_argument("--no-resume", action="store_true",
                       help="start fresh, deleting OUTPUT_DIR's old checkpoints and metrics")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate OUTPUT_DIR's last checkpoint (or MODEL.NASNET.WEIGHTS) instead of training; the "
                   "result is printed, not added to metrics.jsonl")
    p.add_argument("--export-backbone", nargs=2, metavar=("CHECKPOINT", "OUT"),
                   help="write CHECKPOINT's (EMA) weights as a detection backbone .pth and exit")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


@exit_2_on_bad_input  # bad input: one error line naming the file or key, exit 2; a NaN loss: one line, exit 1
def main(argv: list[str] | None = None, dataset: str | None = None) -> int:
    """``dataset``: the tool's own ``DATA.DATASET`` (tools/train_cifar.py, tools/pretrain_imagenet.py), added
    after the user's overrides are checked, so that a missing value is named as the user's key."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default")
    if args.export_backbone:
        from nasnet_det.classification.export import export_backbone

        out = export_backbone(*args.export_backbone)
        print(f"wrote {out}")
        return 0
    if not args.config_file:
        raise ValueError("--config-file is required (see configs/train/)")
    opts = check_overrides(args.opts, "nasnet-det train")
    if args.output_dir:
        opts += ["OUTPUT_DIR", args.output_dir]
    if args.no_resume:
        opts += ["TRAIN.AUTO_RESUME", "False"]
    if dataset:
        opts += ["DATA.DATASET", dataset]  # this tool's dataset, whatever the config says
    cfg = load_config(args.config_file, opts)
    check_output_dir(cfg.OUTPUT_DIR)
    # TensorBoard's and the data generator's writes name no file when the disk is full: name OUTPUT_DIR
    with disk_full_errors(cfg.OUTPUT_DIR, folder=True, key="OUTPUT_DIR"):
        return _run(cfg, args)


def _run(cfg, args) -> int:
    from nasnet_det.classification.trainer import Trainer
    from nasnet_det.engine.distributed import cleanup_distributed

    trainer = Trainer(cfg)
    try:
        if args.eval_only:
            if trainer.last_checkpoint() is not None:
                trainer.resume()
            elif not cfg.MODEL.NASNET.WEIGHTS:
                raise FileNotFoundError(f"nothing to evaluate: no checkpoint in {cfg.OUTPUT_DIR} and no "
                                        "MODEL.NASNET.WEIGHTS")
            result = trainer.run_eval(record=False)  # the training log already has this step's evaluation
        else:
            result = trainer.train(resume=True if args.resume else None)
        if trainer.dist.is_main:
            print(f"top-1 error {result['error']:.2f}%  top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                  f"({result['images']} images); outputs in {cfg.OUTPUT_DIR}")
        return 0
    finally:
        trainer.metrics.close()
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
