#!/usr/bin/env python
"""NASNet-A inference and training step: ours against the peer ports, same weights, same batch, same process.

Peers: Cadene's ``nasnetamobile`` (package pretrainedmodels, 224 px, TF padding) for the mobile model and timm's
``nasnetalarge`` (331 px, timm's padding) for the large one; the peer's weights are loaded into ours
(``load_external_weights``), so both sides compute the same logits. Each peer runs twice: as shipped (NCHW),
and converted to channels_last (weights and input), the layout ours uses by default, so the ratios show what
is ours beyond the memory layout. Measured, repeats interleaved, median:

- inference images/s: peer, peer channels_last, ours as trained (``create_model``), ours fast
  (``model.fuse_for_inference()``: BatchNorm folded into the convs, shared input ReLUs), and with ``--compile``
  ours fast compiled (``compile=True``: torch.compile with Inductor freezing; the compile is a warm-up call,
  not timed);
- training step images/s (forward, cross-entropy, backward, SGD step): peer, peer channels_last, ours;
- peak memory of one inference call and one training step (CPU: malloc bytes in use above the level before; CUDA:
  ``max_memory_allocated``).

    python bench/bench_model.py                                   # CPU: mobile batch 4, large batch 1
    python bench/bench_model.py --model mobile --nchw             # ours in NCHW too (MODEL.NASNET.CHANNELS_LAST False)
    python bench/bench_model.py --model mobile --batch 32 --device cuda --amp --compile   # bf16 autocast
    python bench/bench_model.py --model mobile --batch 32 --device cuda --amp fp16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
import torch.nn.functional as F
from _common import interleaved_median_times, peak_memory_mb, print_row, record, row

from nasnet_det.models import create_model
from nasnet_det.models.pretrained import load_external_weights

PEERS = {"mobile": ("pretrainedmodels nasnetamobile", 224), "large": ("timm nasnetalarge", 331)}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CL = torch.channels_last


def peer_model(name: str) -> torch.nn.Module:
    if name == "mobile":
        from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

        return NASNetAMobile(num_classes=1000)
    import timm

    return timm.create_model("nasnetalarge", pretrained=False)


def autocast_context(device: str, amp: str) -> contextlib.AbstractContextManager:
    """``--amp``'s autocast on ``device`` (bf16 unless ``amp`` says fp16), or nothing without ``--amp``."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=AMP_DTYPES[amp])


def build_models(name: str, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """peer, peer_cl (a copy in channels_last), ours, fast (and compiled), all with the peer's random weights."""
    peer = peer_model(name)
    # Cadene reproduces TF padding; timm approximates it, so ours runs in the matching mode.
    pad_mode = "tf" if name == "mobile" else "timm"
    ours = create_model(f"nasnet_a_{name}", pad_mode=pad_mode, aux_head=False, channels_last=not args.nchw)
    report = load_external_weights(ours, peer.state_dict())
    if report.missing or report.unexpected or report.shape_mismatch:
        raise SystemExit(f"peer weights do not map onto ours, the comparison would be meaningless:\n{report}")
    models = {"peer": peer, "peer_cl": copy.deepcopy(peer).to(memory_format=CL), "ours": ours}
    models = {k: m.to(args.device) for k, m in models.items()}
    models["fast"] = models["ours"].fuse_for_inference()
    if args.compile:
        models["compiled"] = models["ours"].fuse_for_inference(compile=True)
    return models


def bench_one(name: str, args: argparse.Namespace) -> list[dict]:
    peer_name, size = PEERS[name]
    size = args.size or size
    batch = args.batch or (4 if name == "mobile" else 1)
    iters = args.iters or (2 if name == "mobile" else 1)
    dev = args.device
    models = build_models(name, args)
    x = torch.randn(batch, 3, size, size, device=dev)
    inputs = {k: x.contiguous(memory_format=CL) if k == "peer_cl" else x for k in models}
    target = torch.randint(0, 1000, (batch,), device=dev)
    amp = autocast_context(dev, args.amp)

    for m in models.values():
        m.eval()
    with torch.inference_mode():
        reference = models["ours"](x)
        diff = (reference - models["fast"](x)).abs().max().item()
        peer_diff = (reference - models["peer"](x)).abs().max().item()
        if "compiled" in models:
            start = time.perf_counter()
            compiled_diff = (reference - models["compiled"](x)).abs().max().item()
            if args.amp:  # autocast is another graph: compile it here too, not in the timed warm-up
                with amp:
                    models["compiled"](x)
            print(f"torch.compile of ours fast: {time.perf_counter() - start:.0f} s; max |logits ours - compiled| "
                  f"= {compiled_diff:.2e}", flush=True)
    layout = "NCHW" if args.nchw else "channels_last"
    print(f"NASNet-A {name}: batch {batch}, {size} px, {dev}, {torch.get_num_threads()} threads, ours {layout}, "
          f"{iters} iterations x {args.repeats} repeats; max |logits ours - ours fast| = {diff:.2e}, "
          f"|ours - peer| = {peer_diff:.2e}", flush=True)

    def infer(key: str):
        model, inp = models[key], inputs[key]

        def run() -> None:
            with torch.inference_mode(), amp:
                model(inp)
        return run

    trained = ("peer", "peer_cl", "ours")
    optimizers = {k: torch.optim.SGD(models[k].parameters(), lr=1e-4, momentum=0.9) for k in trained}

    def train_step(key: str):
        model, inp, opt = models[key], inputs[key], optimizers[key]

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = F.cross_entropy(model(inp), target)
            loss.backward()
            opt.step()
        return run

    t = interleaved_median_times({k: infer(k) for k in models}, args.repeats, iters, dev)
    mem = {k: peak_memory_mb(infer(k), dev) for k in ("peer", "fast")}
    for k in trained:
        models[k].train()
    tt = interleaved_median_times({k: train_step(k) for k in trained}, args.repeats, iters, dev)
    tmem = {k: peak_memory_mb(train_step(k), dev) for k in ("peer", "ours")}

    setting = dict(batch=batch, size=size, device=dev, amp=args.amp or "none", ours_layout=layout, compile=args.compile,
                   threads=torch.get_num_threads(), repeats=args.repeats, iters=iters,
                   fast_vs_plain_max_abs_diff=diff)
    b = f"nasnet_a_{name} {size}px b{batch}"
    ips = {k: batch / v for k, v in t.items()}
    train_ips = {k: batch / v for k, v in tt.items()}
    peer_cl_name = f"{peer_name} (channels_last)"
    rows = []
    if "compiled" in ips:
        rows += [row(f"{b} inference (fast, compiled)", "images/s", ips["compiled"], ips["peer"], peer_name, True,
                     **setting),
                 row(f"{b} inference (fast, compiled)", "images/s", ips["compiled"], ips["peer_cl"], peer_cl_name,
                     True, **setting)]
    rows += [
        row(f"{b} inference (fast)", "images/s", ips["fast"], ips["peer"], peer_name, True, **setting),
        row(f"{b} inference (fast)", "images/s", ips["fast"], ips["peer_cl"], peer_cl_name, True, **setting),
        row(f"{b} inference (as trained)", "images/s", ips["ours"], ips["peer"], peer_name, True, **setting),
        row(f"{b} inference (as trained)", "images/s", ips["ours"], ips["peer_cl"], peer_cl_name, True, **setting),
        row(f"{b} train step", "images/s", train_ips["ours"], train_ips["peer"], peer_name, True, **setting),
        row(f"{b} train step", "images/s", train_ips["ours"], train_ips["peer_cl"], peer_cl_name, True, **setting),
        row(f"{b} inference peak mem (fast)", "MiB", mem["fast"], mem["peer"], peer_name, False, **setting),
        row(f"{b} train step peak mem", "MiB", tmem["ours"], tmem["peer"], peer_name, False, **setting),
    ]
    for r in rows:
        print_row(r)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mobile", "large", "both"), default="both")
    parser.add_argument("--batch", type=int, default=0, help="default: 4 mobile, 1 large")
    parser.add_argument("--size", type=int, default=0, help="default: 224 mobile, 331 large")
    parser.add_argument("--iters", type=int, default=0, help="calls per timed repeat (default: 2 mobile, 1 large)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", nargs="?", const="bf16", default="", choices=tuple(AMP_DTYPES),
                        help="autocast, both sides: bf16 (the default of --amp alone: what the trainers' TRAIN.AMP "
                        "bf16 ships) or fp16")
    parser.add_argument("--nchw", action="store_true", help="ours in NCHW (default: channels_last, as shipped)")
    parser.add_argument("--compile", action="store_true",
                        help="also ours fast + torch.compile (about a minute per model on a 2-core CPU)")
    parser.add_argument("--tag", default="", help="suffix of this run's section in bench/results.json")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    return parser


def main() -> None:
    parser = build_parser()
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
