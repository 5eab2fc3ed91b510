#!/usr/bin/env python
"""Cost of the training recipe: ``Trainer.train_step`` against a plain training step of timm's NASNet-A of the
same size, in the same process. Prints images/s of both and their ratio (trainer / plain timm).

The trainer step is the one real runs take: auxiliary-head loss, ScheduledDropPath (at mid-training keep
probability), gradient-norm clipping, SGD with momentum and weight decay, LR schedule and the weight EMA
update, plus AMP when asked; both sides run in the same memory layout (channels_last, ours' default). The plain
step is forward + cross-entropy + backward + SGD on timm's ``NASNetALarge``. timm fixes N=6 and
skip_reduction_layer_input, so both sides are NASNet-A 6@F with
F = --penultimate (a multiple of 24), the same stem width and timm's padding. The ratio is therefore what
the recipe (and our network implementation) costs on top of a bare training step.

    python bench/bench_train_step.py                          # CPU-sized default: 6@288, 96 px, batch 8
    python bench/bench_train_step.py --penultimate 4032 --stem 96 --size 331 --batch 32 --amp bf16
                                                              # paper-scale large on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

NUM_CLASSES = 10  # both sides; the classifier width hardly matters for speed, and a tiny fake dataset suffices


def timed_rate(step: Callable[[], None], batch: int, warmup: int, iters: int, cuda: bool) -> float:
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    return iters * batch / (time.perf_counter() - start)


def build_trainer(args: argparse.Namespace, output_dir: str):
    from nasnet_det.classification.config import load_config
    from nasnet_det.classification.trainer import Trainer

    opts = {
        "OUTPUT_DIR": output_dir, "DATA.DATASET": "imagenet", "DATA.FAKE_CLASSES": NUM_CLASSES,
        "DATA.FAKE_TRAIN_PER_CLASS": math.ceil(args.batch / NUM_CLASSES), "DATA.FAKE_VAL_PER_CLASS": 1,
        "DATA.IMAGE_SIZE": args.size, "DATA.NUM_WORKERS": 0,
        "MODEL.NASNET.PRESET": "nasnet_a_large", "MODEL.NASNET.PENULTIMATE_FILTERS": args.penultimate,
        "MODEL.NASNET.STEM_FILTERS": args.stem, "MODEL.NASNET.PAD_MODE": "timm", "MODEL.NASNET.DROPOUT": 0.0,
        "SOLVER.OPTIMIZER": "sgd", "SOLVER.BASE_LR": 0.01, "SOLVER.MOMENTUM": 0.9, "SOLVER.WEIGHT_DECAY": 5e-5,
        "SOLVER.CLIP_GRAD_NORM": 5.0, "SOLVER.AUX_WEIGHT": 0.4, "SOLVER.EMA_DECAY": 0.9999,
        "SOLVER.LR_SCHEDULE": "cosine", "SOLVER.MAX_STEPS": 1_000_000, "SOLVER.BATCH_SIZE": args.batch,
        "TRAIN.DEVICE": args.device, "TRAIN.AMP": args.amp, "MODEL.NASNET.CHANNELS_LAST": not args.nchw,
        "TRAIN.TENSORBOARD": False,
    }
    trainer = Trainer(load_config(None, [str(v) for kv in opts.items() for v in kv]))
    # Mid-training: ScheduledDropPath drops paths at half its final rate, as most steps of a run do.
    trainer.state.step = trainer.total_steps // 2
    return trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--penultimate", type=int, default=288)
    p.add_argument("--stem", type=int, default=32)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate the two steps this many times and keep each one's best rate (so warm-up "
                        "and a noisy machine do not favour whichever runs second)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--nchw", action="store_true", help="both in NCHW (default: both channels_last, ours as shipped)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.penultimate % 24:
        p.error(f"--penultimate must be a multiple of 24, got {args.penultimate}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import timm

    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as out:
        trainer = build_trainer(args, out)
        device = trainer.device
        cuda = device.type == "cuda"
        fmt = torch.channels_last if trainer.channels_last else torch.contiguous_format
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
        batches = itertools.repeat((x, y))

        plain = timm.create_model("nasnetalarge", pretrained=False, num_classes=NUM_CLASSES,
                                  num_features=args.penultimate, stem_size=args.stem)
        plain.to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
        amp = trainer.amp_dtype
        autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext

        def plain_step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(plain(x).float(), y)
            loss.backward()
            opt.step()

        steps = {"Trainer.train_step": lambda: trainer.train_step(batches), "plain timm step": plain_step}
        rates = dict.fromkeys(steps, 0.0)
        for _ in range(args.rounds):
            for name, step in steps.items():
                rates[name] = max(rates[name], timed_rate(step, args.batch, args.warmup, args.iters, cuda))
        n_ours = sum(p.numel() for n, p in trainer.model.named_parameters() if not n.startswith("aux_head."))
        n_plain = sum(p.numel() for p in plain.parameters())
        trainer.metrics.close()

    print(f"NASNet-A 6@{args.penultimate} stem {args.stem}, {args.size}px, batch {args.batch}, {device}, "
          f"amp {args.amp}, channels_last {trainer.channels_last}, best of {args.rounds} rounds x {args.iters} "
          f"steps; params (no aux head) ours {n_ours:,} timm {n_plain:,}")
    print("  Trainer.train_step: aux head 0.4, drop path keep 0.7 (half-way), clip 5, SGD, EMA 0.9999")
    for name, rate in rates.items():
        print(f"  {name:20s} {rate:8.1f} images/s")
    ratio = rates["Trainer.train_step"] / rates["plain timm step"]
    print(f"  ratio (Trainer.train_step / plain timm step): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
