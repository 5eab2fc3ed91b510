"""Throughput of our NASNet-A against the peer ports, measured in the same run.

Peers: Cadene's ``nasnetamobile`` (package pretrainedmodels) for the mobile model and timm's
``nasnetalarge`` for the large one, with the same weights loaded into ours, so both run identical math.
Prints images/s for inference and for a training step (forward + backward) and the ratio ours / peer.

    .venv/bin/python bench/bench_model.py --model mobile --batch 8 --size 224 --iters 5
"""

from __future__ import annotations

import argparse
import time

import torch

from nasnet_det.models import create_model
from nasnet_det.models.pretrained import load_external_weights


def peer_model(name: str) -> torch.nn.Module:
    if name == "mobile":
        from pretrainedmodels.models.nasnet_mobile import NASNetAMobile

        return NASNetAMobile(num_classes=1000)
    import timm

    return timm.create_model("nasnetalarge", pretrained=False)


def images_per_second(model: torch.nn.Module, x: torch.Tensor, iters: int, train: bool) -> float:
    model.train(train)
    def step() -> None:
        if train:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    step()  # warm-up
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return iters * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mobile", "large"), default="mobile")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    peer = peer_model(args.model)
    # Cadene reproduces TF padding; timm approximates it, so ours runs in the matching mode.
    ours = create_model(f"nasnet_a_{args.model}", pad_mode="tf" if args.model == "mobile" else "timm",
                        aux_head=False)
    report = load_external_weights(ours, peer.state_dict())
    if report.missing or report.unexpected or report.shape_mismatch:
        raise SystemExit(f"peer weights do not map onto ours, the comparison would be meaningless:\n{report}")
    peer.to(args.device)
    ours.to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    print(f"NASNet-A {args.model}, batch {args.batch}, {args.size}px, {args.device}, "
          f"{torch.get_num_threads()} threads, {args.iters} iterations")
    for train in (False, True):
        ours_ips = images_per_second(ours, x, args.iters, train)
        peer_ips = images_per_second(peer, x, args.iters, train)
        mode = "train step" if train else "inference "
        print(f"{mode}: ours {ours_ips:7.1f} img/s   peer {peer_ips:7.1f} img/s   "
              f"ratio ours/peer {ours_ips / peer_ips:.2f}")


if __name__ == "__main__":
    main()
