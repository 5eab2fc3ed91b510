#!/usr/bin/env python
"""NASNet-A inference and training step: ours against the peer ports, same weights, same batch, same process.

Peers: Cadene's ``nasnetamobile`` (package pretrainedmodels, 224 px, TF padding) for the mobile model and timm's
``nasnetalarge`` (331 px, timm's padding) for the large one; the peer's weights are loaded into ours
(``load_external_weights``), so both sides compute the same logits. Measured, repeats interleaved, median:

- inference images/s: peer, ours as trained (``create_model``), ours fast (``model.fuse_for_inference()``:
  BatchNorm folded into the convs; ``--channels-last`` / ``--compile`` on top);
- training step images/s (forward, cross-entropy, backward, SGD step): peer, ours;
- peak memory of one inference call and one training step (CPU: malloc bytes in use above the level before; CUDA:
  ``max_memory_allocated``).

    python bench/bench_model.py                                   # CPU: mobile batch 4, large batch 1
    python bench/bench_model.py --model mobile --batch 32 --device cuda --amp --channels-last --compile
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from _common import interleaved_median_times, peak_memory_mb, print_row, record, row

from nasnet_det.models import create_model
from nasnet_det.models.pretrained import load_external_weights

PEERS = {"mobile": ("pretrainedmodels nasnetamobile", 224), "large": ("timm nasnetalarge", 331)}


def peer_model(name: str) -> torch.nn.Module:
    if name == "mobile":
        from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

        return NASNetAMobile(num_classes=1000)
    import timm

    return timm.create_model("nasnetalarge", pretrained=False)


def build_pair(name: str, fast_kwargs: dict) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(peer, ours, ours fast) with the peer's (random-init) weights in ours."""
    peer = peer_model(name)
    # Cadene reproduces TF padding; timm approximates it, so ours runs in the matching mode.
    pad_mode = "tf" if name == "mobile" else "timm"
    ours = create_model(f"nasnet_a_{name}", pad_mode=pad_mode, aux_head=False)
    report = load_external_weights(ours, peer.state_dict())
    if report.missing or report.unexpected or report.shape_mismatch:
        raise SystemExit(f"peer weights do not map onto ours, the comparison would be meaningless:\n{report}")
    fast = ours.fuse_for_inference(**fast_kwargs)
    return peer, ours, fast


def bench_one(name: str, args: argparse.Namespace) -> list[dict]:
    peer_name, size = PEERS[name]
    size = args.size or size
    batch = args.batch or (4 if name == "mobile" else 1)
    iters = args.iters or 1
    dev = args.device
    fast_kwargs = dict(channels_last=args.channels_last, compile=args.compile)
    peer, ours, fast = build_pair(name, fast_kwargs)
    for m in (peer, ours, fast):
        m.to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    x_fast = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    target = torch.randint(0, 1000, (batch,), device=dev)
    amp = torch.autocast(dev.split(":")[0], dtype=torch.bfloat16 if dev == "cpu" else torch.float16) \
        if args.amp else contextlib.nullcontext()

    with torch.inference_mode():
        diff = (ours.eval()(x) - fast(x_fast)).abs().max().item()
    print(f"NASNet-A {name}: batch {batch}, {size} px, {dev}, {torch.get_num_threads()} threads, "
          f"{iters} iterations x {args.repeats} repeats; max |logits ours - ours fast| = {diff:.2e}", flush=True)

    def infer(model: torch.nn.Module, inp: torch.Tensor):
        def run() -> None:
            with torch.inference_mode(), amp:
                model(inp)
        return run

    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in (("peer", peer),
                                                                                         ("ours", ours))}

    def train_step(key: str, model: torch.nn.Module):
        def run() -> None:
            opt = optimizers[key]
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
        return run

    peer.eval(), ours.eval()
    t = interleaved_median_times({"peer": infer(peer, x), "ours": infer(ours, x), "fast": infer(fast, x_fast)},
                                 args.repeats, iters, dev)
    mem = {k: peak_memory_mb(fn, dev) for k, fn in (("peer", infer(peer, x)), ("ours", infer(ours, x)),
                                                     ("fast", infer(fast, x_fast)))}
    peer.train(), ours.train()
    tt = interleaved_median_times({"peer": train_step("peer", peer), "ours": train_step("ours", ours)},
                                  args.repeats, iters, dev)
    tmem = {k: peak_memory_mb(train_step(k, m), dev) for k, m in (("peer", peer), ("ours", ours))}

    setting = dict(batch=batch, size=size, device=dev, amp=args.amp, channels_last=args.channels_last,
                   compile=args.compile, threads=torch.get_num_threads(), repeats=args.repeats, iters=iters,
                   fast_vs_plain_max_abs_diff=diff)
    b = f"nasnet_a_{name} {size}px b{batch}"
    rows = [
        row(f"{b} inference (fast)", "images/s", batch / t["fast"], batch / t["peer"], peer_name, True, **setting),
        row(f"{b} inference (as trained)", "images/s", batch / t["ours"], batch / t["peer"], peer_name, True,
            **setting),
        row(f"{b} train step", "images/s", batch / tt["ours"], batch / tt["peer"], peer_name, True, **setting),
        row(f"{b} inference peak mem (fast)", "MiB", mem["fast"], mem["peer"], peer_name, False, **setting),
        row(f"{b} train step peak mem", "MiB", tmem["ours"], tmem["peer"], peer_name, False, **setting),
    ]
    for r in rows:
        print_row(r)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mobile", "large", "both"), default="both")
    parser.add_argument("--batch", type=int, default=0, help="default: 4 mobile, 1 large")
    parser.add_argument("--size", type=int, default=0, help="default: 224 mobile, 331 large")
    parser.add_argument("--iters", type=int, default=0, help="calls per timed repeat (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU), both sides")
    parser.add_argument("--channels-last", action="store_true", help="ours fast: channels_last weights/input")
    parser.add_argument("--compile", action="store_true", help="ours fast: torch.compile")
    parser.add_argument("--tag", default="", help="suffix of this run's section in bench/results.json")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args()
    if args.size and args.size < 224 and args.model in ("mobile", "both"):
        # pretrainedmodels' nasnetamobile ends in a fixed 7x7 average pool (no adaptive pooling).
        parser.error(f"--size {args.size}: the mobile peer (pretrainedmodels nasnetamobile) needs >= 224 px")
    rows = []
    section = "bench_model" + ("_gpu" if args.device.startswith("cuda") else "") + (f"_{args.tag}" if args.tag else "")
    for name in (("mobile", "large") if args.model == "both" else (args.model,)):
        rows += bench_one(name, args)
        if not args.no_record:  # after each model, so a stopped run keeps what it measured
            record(section, rows)


if __name__ == "__main__":
    main()
