#!/usr/bin/env python
"""What the strided 1x1 workaround would cost where it is not needed: the subsample ``x[..., ::2, ::2]`` then a
stride-1 1x1 convolution (``nasnet_det.models.ops.subsampled_conv1x1``) against PyTorch's own stride-2 1x1
convolution (oneDNN's strided kernel), same process, channels_last, forward + backward (a training step's
work) and forward alone; and a training step of a network whose reduction cells have such ops.

oneDNN's strided 1x1 backward-weights kernels write past their workspace when the input has fewer channels
than the kernel's channel block (uxlfoundation/oneDNN#6035), so ``Conv2dSame`` takes the subsample below
``NARROW_CHANNELS`` (16) input channels only. The peer is timed at 16 channels and more, where it is correct:
the rows say what taking the subsample everywhere would cost. (The published NASNet-A cells have no strided
1x1 op; searched cells and the search's children may.)

    python bench/bench_strided_1x1.py [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved_median_times, print_row, record, row

from nasnet_det.models.ops import Conv2dSame, subsampled_conv1x1

CL = torch.channels_last


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--widths", default="16:56,44:56,88:28,176:14",
                        help="channels:input size pairs (NASNet-A mobile's widths at its strides)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    return parser


# A searched cell pair whose reduction cell applies identity and a 1x1 conv at stride 2 to both cell inputs
# (four strided 1x1 convs per reduction cell), the case the workaround is for.
STRIDED_GENOTYPE = {
    "name": "strided_1x1",
    "normal": {"blocks": [[0, 1, "sep_conv_3x3", "identity"], [1, 0, "sep_conv_5x5", "avg_pool_3x3"],
                          [0, 2, "sep_conv_3x3", "identity"], [1, 1, "avg_pool_3x3", "sep_conv_3x3"],
                          [0, 3, "sep_conv_5x5", "conv_1x1"]], "concat": [4, 5, 6]},
    "reduce": {"blocks": [[0, 1, "identity", "conv_1x1"], [1, 0, "identity", "conv_1x1"],
                          [2, 3, "sep_conv_3x3", "avg_pool_3x3"], [0, 4, "sep_conv_5x5", "max_pool_3x3"],
                          [1, 5, "sep_conv_7x7", "identity"]], "concat": [2, 3, 6]},
}


def network_rows(args: argparse.Namespace) -> list[dict]:
    """A training step of a whole network with such cells, every strided 1x1 conv subsampled, against the same
    network as built (f = 64: every strided 1x1 conv has >= 16 input channels, so oneDNN's kernel runs)."""
    import copy

    import torch.nn.functional as F

    from nasnet_det.models.nasnet import NASNet
    from nasnet_det.space import Genotype

    peer = NASNet(Genotype.from_dict(STRIDED_GENOTYPE), num_classes=10, num_cells=2, filters=64, aux_head=False)
    ours = copy.deepcopy(peer)
    strided = [m for m in ours.modules() if isinstance(m, Conv2dSame) and m.kernel_size == (1, 1)
               and m.stride != (1, 1)]
    assert strided and not any(m.subsample for m in strided), "f=64 should leave every strided 1x1 to oneDNN"
    for m in strided:
        m.subsample = True
    x = torch.randn(args.batch, 3, 128, 128)
    y = torch.randint(0, 10, (args.batch,))
    ours.train(), peer.train()

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        return run

    t = interleaved_median_times({"ours": step(ours), "peer": step(peer)}, args.repeats, 1)
    setting = dict(batch=args.batch, size=128, network="ImageNet layout 2@f64, reductions with 4 strided 1x1 convs",
                   strided_1x1_convs=len(strided), threads=torch.get_num_threads(), repeats=args.repeats)
    return [row(f"network with strided 1x1 ops, 128px b{args.batch}, train step, all subsampled", "seconds",
                t["ours"], t["peer"], "same network, oneDNN strided 1x1", False, **setting)]


def main() -> None:
    args = build_parser().parse_args()
    torch.manual_seed(0)
    rows = []
    for spec in args.widths.split(","):
        c, size = (int(v) for v in spec.split(":"))
        peer = torch.nn.Conv2d(c, c, 1, 2, bias=False).to(memory_format=CL)

        def ours(x, w=peer.weight):
            return subsampled_conv1x1(x, w, None, (2, 2))
        x = torch.randn(args.batch, c, size, size).contiguous(memory_format=CL).requires_grad_()
        with torch.no_grad():
            assert torch.allclose(ours(x), peer(x), atol=1e-5), "the workaround must compute the same convolution"

        def step(conv, x=x, peer=peer):
            def run():
                peer.zero_grad(set_to_none=True)
                x.grad = None
                conv(x).sum().backward()
            return run

        def forward(conv, x=x):
            def run():
                with torch.no_grad():
                    conv(x)
            return run

        t = interleaved_median_times({"ours": step(ours), "peer": step(peer), "ours_fwd": forward(ours),
                                      "peer_fwd": forward(peer)}, args.repeats, args.iters)
        setting = dict(batch=args.batch, channels=c, size=size, threads=torch.get_num_threads(),
                       repeats=args.repeats, iters=args.iters, layout="channels_last")
        name = f"1x1 stride-2 conv, {c} ch, {size}px, b{args.batch}"
        rows += [row(f"{name}, forward + backward", "seconds", t["ours"], t["peer"],
                     "torch Conv2d stride 2 (oneDNN strided 1x1)", False, **setting),
                 row(f"{name}, forward", "seconds", t["ours_fwd"], t["peer_fwd"],
                     "torch Conv2d stride 2 (oneDNN strided 1x1)", False, **setting)]
    rows += network_rows(args)
    for r in rows:
        print_row(r)
    if not args.no_record:
        record("bench_strided_1x1", rows, notes=[
            "ours = x[..., ::2, ::2] then a stride-1 1x1 conv (subsampled_conv1x1, what Conv2dSame runs below 16 "
            "input channels); peer timed only at >= 16 channels, where oneDNN's strided kernel is correct "
            "(oneDNN#6035)"])


if __name__ == "__main__":
    main()
