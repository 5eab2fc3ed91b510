#!/usr/bin/env python
"""Training-step throughput (forward + backward + SGD step, images/s) of our NASNet-A against timm's
``NASNetALarge`` built at the same size, in the same process. Prints both and their ratio (ours / timm).

timm fixes N=6 and skip_reduction_layer_input, so both sides are NASNet-A 6@F with F = --penultimate
(multiple of 24), the same stem width and TF 'same' padding, no aux head (timm has none).

    python bench/bench_train_step.py                          # CPU-sized default: 6@288, 96 px, batch 8
    python bench/bench_train_step.py --penultimate 4032 --stem 96 --size 331 --batch 32 --amp bf16 \
        --channels-last                                       # paper-scale large on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F


def step_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, warmup: int, iters: int,
              amp: torch.dtype | None) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    ctx = (lambda: torch.autocast(x.device.type, dtype=amp)) if amp else contextlib.nullcontext

    def one_step():
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        one_step()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        one_step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return iters * len(x) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--penultimate", type=int, default=288)
    p.add_argument("--stem", type=int, default=32)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate the two models this many times and keep each one's best rate (so warm-up "
                        "and a noisy machine do not favour whichever runs second)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import timm

    from nasnet_det.models import build_nasnet

    device = torch.device(args.device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    torch.manual_seed(0)
    ours = build_nasnet("nasnet_a", dataset="imagenet", num_cells=6, penultimate_filters=args.penultimate,
                        stem_filters=args.stem, skip_reduction_layer_input=True, aux_head=False,
                        pad_mode="timm", image_size=args.size)
    theirs = timm.create_model("nasnetalarge", pretrained=False, num_features=args.penultimate,
                               stem_size=args.stem)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    rates = {"nasnet_det": 0.0, "timm": 0.0}
    for _ in range(args.rounds):
        for name, model in (("nasnet_det", ours), ("timm", theirs)):
            model.to(device, memory_format=fmt)
            rates[name] = max(rates[name], step_rate(model, x, y, args.warmup, args.iters, amp))
            model.cpu()
    print(f"NASNet-A 6@{args.penultimate} stem {args.stem}, {args.size}px, batch {args.batch}, {device}, "
          f"amp {args.amp}, channels_last {args.channels_last}, best of {args.rounds} rounds; "
          f"params ours {n_ours:,} timm {n_theirs:,}")
    for name, rate in rates.items():
        print(f"  {name:10s} {rate:8.1f} images/s")
    print(f"  ratio (nasnet_det / timm): {rates['nasnet_det'] / rates['timm']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
