#!/usr/bin/env python
"""Mixed precision against float32 through the project's real trainers, same process, same seed.

- ``--task detection``: ``nasnet_det.detection.train.Trainer`` (detectron2's ``AMPTrainer``, float16 + gradient
  scaler, on CUDA; bfloat16 autocast on a CPU) on the embedded COCO photos: NASNet-A mobile FPN at ``--size`` px
  from random weights with trainable BN (``--smoke``: the tiny smoke detector, for a CPU check).
- ``--task classification``: ``nasnet_det.classification.Trainer.train_step`` with ``TRAIN.AMP`` none / bf16 /
  fp16 (fp16 on CUDA only) on a fixed random batch (NASNet-A 6@``--penultimate``).

Reported: seconds per training iteration (median after a warm-up) and the losses of the first iterations of
each precision (finite, and close to float32's). Records ``bench_amp`` (``bench_amp_gpu`` on CUDA) rows.

    python bench/bench_amp.py --task detection --device cpu --smoke --iters 3     # CPU check (bf16)
    python bench/bench_amp.py --task detection --device cuda --size 600 --iters 20
    python bench/bench_amp.py --task classification --device cuda --iters 20
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, print_row, record, row

PEER = "same, float32"


def detection_run(args: argparse.Namespace, amp: bool, out: Path) -> tuple[float, list[float]]:
    from detectron2.utils.env import seed_all_rng

    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg
    from nasnet_det.detection.train import Trainer

    name = "smoke-nasnet-fpn.yaml" if args.smoke else "faster_rcnn_nasnet_a_mobile_fpn_600.yaml"
    cfg = load_cfg(get_nasnet_cfg(), REPO / "configs" / "detection" / name)  # plain YAML, as the tools read it
    if args.smoke:
        cfg.MODEL.NASNET.FILTERS, cfg.MODEL.NASNET.STEM_FILTERS = 4, 8
    else:
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (args.size,), int(args.size * 1667 // 1000)
    cfg.MODEL.NASNET.NORM, cfg.MODEL.NASNET.FREEZE_AT = "BN", 0  # random weights: nothing to freeze
    cfg.MODEL.NASNET.WEIGHTS, cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", "", args.device
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("coco_sample_train",), ()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR = args.batch, args.iters, 0.005
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS, cfg.SOLVER.CHECKPOINT_PERIOD = 2, (), 100000
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.OUTPUT_DIR = str(out)
    seed_all_rng(0)
    from nasnet_det.detection.data import register_builtin_datasets

    register_builtin_datasets(list(cfg.DATASETS.TRAIN))
    trainer = Trainer(cfg)
    trainer.train()
    times = [v for v, _ in trainer.storage.history("time").values()]
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return statistics.median(times[1:] or times), losses


def classification_run(args: argparse.Namespace, amp: str, out: Path) -> tuple[float, list[float]]:
    from bench_train_step import NUM_CLASSES, build_trainer

    torch.manual_seed(0)
    trainer = build_trainer(argparse.Namespace(penultimate=args.penultimate, stem=32, size=args.size,
                                               batch=args.batch, device=args.device, amp=amp, nchw=False), str(out))
    device = trainer.device
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if trainer.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device)
    batches = itertools.repeat((x, y))
    times, losses = [], []
    for _ in range(args.iters + 1):
        before = dict(trainer._log_acc)  # the trainer sums each step's loss and image count here until it logs
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append((trainer._log_acc["loss"] - before["loss"]) / (trainer._log_acc["count"] - before["count"]))
    trainer.metrics.close()
    return statistics.median(times[1:]), losses


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("detection", "classification"),
                   help="default: both (on a CPU at check size: the smoke detector, a 6@96 classifier at 64 px)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=0, help="images per iteration (default: detection 4, "
                                                        "classification 64 on CUDA, 8 on a CPU)")
    p.add_argument("--size", type=int, default=0, help="detection: shorter side (600); classification: crop (224)")
    p.add_argument("--penultimate", type=int, default=1056, help="classification: F of NASNet-A 6@F")
    p.add_argument("--smoke", action="store_true", help="detection: the tiny smoke detector (a CPU check)")
    p.add_argument("--no-record", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.task:
        return run_task(args)
    status = 0
    for task in ("detection", "classification"):  # `make bench` (bench/run_all.py) passes no arguments
        one = argparse.Namespace(**vars(args))
        one.task = task
        if not one.device.startswith("cuda"):
            one.smoke, one.iters = True, min(one.iters, 3)
            if task == "classification":
                one.penultimate, one.size = 96, one.size or 64
        status |= run_task(one)
    return status


def run_task(args: argparse.Namespace) -> int:
    cuda = args.device.startswith("cuda")
    if args.task == "detection":
        args.batch, args.size = args.batch or 4, args.size or 600
        precisions = {"float16 AMPTrainer" if cuda else "bfloat16 autocast": True}
        run, fp32 = detection_run, False
    else:
        args.batch, args.size = args.batch or (64 if cuda else 8), args.size or (224 if cuda else 64)
        precisions = {"bf16": "bf16", **({"fp16": "fp16"} if cuda else {})}
        run, fp32 = classification_run, "none"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_amp_") as tmp:
        for label, setting in {"float32": fp32, **precisions}.items():
            results[label] = run(args, setting, Path(tmp) / label)
            seconds, losses = results[label]
            print(f"{args.task} {label}: {seconds:.4f} s/iter; losses {[round(v, 4) for v in losses[:5]]}",
                  flush=True)
    base_seconds, base_losses = results["float32"]
    setting = dict(device=args.device, batch=args.batch, size=args.size, iters=args.iters,
                   **({"smoke": args.smoke} if args.task == "detection" else {"penultimate": args.penultimate}))
    rows, status = [], 0
    for label in precisions:
        seconds, losses = results[label]
        finite = all(v == v and abs(v) != float("inf") for v in losses)
        first = max(abs(a - b) / max(abs(b), 1e-8) for a, b in zip(losses[:3], base_losses[:3]))
        status |= not finite
        rows.append(row(f"{args.task} train iter, {label}", "s/iter", seconds, base_seconds, PEER, False,
                        losses_finite=finite, first_losses_max_rel_diff=round(first, 4), **setting))
    for r in rows:
        print_row(r)
        print(f"  losses finite: {r['losses_finite']}; first 3 losses vs float32: max relative difference "
              f"{r['first_losses_max_rel_diff']:.2%}")
    if not args.no_record:
        record("bench_amp" + ("_gpu" if cuda else ""), rows)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
