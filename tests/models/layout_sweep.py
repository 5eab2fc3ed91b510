"""The memory-layout sweep: every module the project trains, in its default layout, against a plain reference.

Why: oneDNN's CPU kernels differ by ISA and by shape, and one of them (the strided 1x1 backward-weights
kernel on an NHWC input with fewer channels than its channel block, uxlfoundation/oneDNN#6035) writes past
its workspace: wrong gradients, segfaults or hangs for exactly the narrow networks this project trains on a
CPU. This sweep runs each module of the search space, the stems, the auxiliary head, the supernet's cells
and the detection backbones and heads at every channel count, stride, thread count and batch size, forward
and backward, and compares outputs, input gradients and parameter gradients with a float64 NCHW copy run
with oneDNN disabled (the plain ATen kernels).

The cases run in forked processes, several to a process (a fork cost as much as a small case), each under a
time limit, so a hang or a segfault is a failure that names the module, stride and channel count instead of a
frozen test run; a case that fails after others in its process is judged again alone (:func:`run_batch`).
``ONEDNN_MAX_CPU_ISA`` caps the ISA oneDNN uses (it reads it once, at its first primitive), so one machine also
checks the kernels that older CPUs run: the sweep starts one case server per ISA.

Conditioning, so that a mismatch means a wrong kernel and not float rounding:

- The reference runs replay the tested run's ReLU masks (:class:`ReluReplay`): rounding cannot flip a ReLU
  whose input is near zero, which would move that element's whole gradient and look like a bug. Issue 31's
  "weight gradient 1.1e-3 off, rank 1" report was exactly that (docs/reliability.md): a BatchNorm output
  1.03e-7 from zero fell on the other side in float32 (channels_last, 2 threads), and the one element's
  gradient, spread over its channel by the BatchNorm backward, put a rank-1 error in one row of the 1x1
  conv's weight gradient; with the masks replayed, 3.5e-6 (``selftest_kink`` keeps this in force).
- The whole-network cases use a cell without max pooling (max pooling is compared at the op level, where both
  sides pool identical inputs): near-ties inside a network would otherwise route gradients differently.
- Parameter gradients are compared against the largest parameter gradient of the module: a parameter whose
  gradient cancels to nearly zero (a 1x1 conv before BatchNorm is scale invariant) has no meaningful relative
  error of its own, and oneDNN's float32 reductions are less exact there than the plain kernels (a 2-channel
  supernet projection: 1.4e-4 of its own norm, 3e-6 plain), so its own norm would fail correct kernels. A
  small tensor that a kernel overwrote still fails once the damage reaches 1e-4 of the module's scale
  (``selftest_small_param``); the faults this sweep found were 0.3-400x that scale, or crashes.

Run it by hand (``python tests/models/layout_sweep.py --help``); ``tests/models/test_layout_sweep.py`` runs it in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# tests/ (where the helpers are) is on sys.path under pytest, not when this file runs as a script (the case
# server, or a full sweep by hand)
TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from helpers.lines import LineReader  # noqa: E402

TOLERANCE = 1e-4  # relative difference allowed against the float64 reference
ALLOWANCE = 10.0  # ... or this many times the plain float32 computation's own difference, where larger,
MAX_ALLOWED = 2e-2  # ... but never more than this (float32 itself is 7e-3 off in a NASNet-A case; bugs were >= 0.5)
# One op case takes about 2 s on the 2-core development CPU, a network case up to 45 s when that CPU is shared
# (ModuleKind.timeout_scale); a case that runs out of time is tried once more with twice the time before it
# counts as a hang, so that a busy machine does not pass for a hung kernel.
CASE_TIMEOUT_S = 60.0
ISAS = ("native", "AVX2")  # "native": no cap; values of ONEDNN_MAX_CPU_ISA otherwise
CHANNELS = tuple(range(1, 33))
THREADS = (1, 2)
BATCHES = (1, 16)


@dataclass(frozen=True)
class Case:
    module: str
    stride: int
    channels: int
    batch: int
    threads: int

    def describe(self) -> str:
        return (f"{self.module} stride {self.stride}, {self.channels} channels, batch {self.batch}, "
                f"{self.threads} thread{'s' if self.threads > 1 else ''}")


@dataclass(frozen=True)
class Outcome:
    case: Case
    isa: str
    status: str  # "ok", "mismatch", "error", "crash", "hang", "skip"
    detail: str = ""
    error: float = 0.0
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "skip")

    def describe(self) -> str:
        isa = "native ISA" if self.isa == "native" else f"ONEDNN_MAX_CPU_ISA={self.isa}"
        return f"{self.case.describe()} ({isa}): {self.status}: {self.detail}"


# ---------------------------------------------------------------------------------------------- modules
# A builder takes (channels, stride) and returns the module in the project's default layout plus a function
# that makes its float32 inputs for a batch size. It runs inside the forked case process only.
Built = tuple  # (module, make_inputs(batch, generator) -> list[Tensor], input layout: "channels_last" | "nchw")


@dataclass(frozen=True)
class ModuleKind:
    name: str
    strides: tuple[int, ...]
    build: Callable[[int, int], Built]
    min_channels: int = 1
    # The server runs each kind once before forking (one thread: forked children of a process whose OpenMP
    # pool started would hang), so that library start-up is paid once, not per case. At this width no conv
    # has fewer input channels than any ISA's channel block, so the warm-up cannot hit a narrow-conv bug.
    warm_channels: int = 16
    timeout_scale: float = 1.0  # x the sweep's case time limit


def _norm():
    import functools

    from torch import nn

    return functools.partial(nn.BatchNorm2d, eps=1e-3)


def _randn(generator, *shape):
    import torch

    return torch.randn(*shape, generator=generator)


def _maps(c: int) -> Callable:
    # A kernel that writes past its workspace shows only when the write reaches memory in use, which depends
    # on the size: oneDNN#6035's AVX-512 kernel shows at 64 px with one image, not at 32 px. One image is
    # 64 px, a batch of 16 is 32 px (the AVX2 kernel shows there).
    return lambda b, g: [_randn(g, b, c, 64 if b == 1 else 32, 64 if b == 1 else 32)]


def _op_builder(op: str) -> Callable[[int, int], Built]:
    def build(c: int, stride: int) -> Built:
        from nasnet_det.models.ops import build_op

        return build_op(op, c, c, stride, _norm()), _maps(c), "channels_last"
    return build


def _factorized_reduce(c: int, stride: int) -> Built:
    from nasnet_det.models.ops import FactorizedReduce

    return FactorizedReduce(c, max(2, c), stride, _norm()), _maps(c), "channels_last"


def _stem(c: int, stride: int) -> Built:
    """conv0 + BN: the CIFAR stem (3x3 SAME, stride 1) or the ImageNet stem (3x3 VALID, stride 2)."""
    from torch import nn

    from nasnet_det.models.ops import Conv2dSame

    stem = nn.Sequential()
    if stride == 1:
        stem.add_module("conv", Conv2dSame(3, c, 3, 1))
    else:
        stem.add_module("conv", nn.Conv2d(3, c, 3, 2, 0, bias=False))
    stem.add_module("bn", _norm()(c))
    return stem, lambda b, g: [_randn(g, b, 3, 64, 64)], "channels_last"


def _aux_head(c: int, stride: int) -> Built:
    from nasnet_det.models.nasnet import AuxHead

    module = AuxHead(c, 10, _norm(), kernel_size=2)
    # Batch 1 gives its 768-channel BN one value per channel, which training-mode BN refuses; 2 is the least
    return module, lambda b, g: [_randn(g, max(2, b), c, 8, 8)], "channels_last"


def _supernet_cell(c: int, stride: int) -> Built:
    """A one-shot SuperCell running a path with a concat block (its 2C -> C projection), the output
    convolutions and, for stride 2, the stride-2 op table."""
    from torch import nn

    from nasnet_det.space import Block, CellSpec
    from search.supernet import SuperCell

    reduction = stride == 2
    cell = SuperCell(2, c, c, c, reduction, 1, _norm())
    spec = CellSpec(blocks=(Block(0, 1, "sep_conv_3x3", "identity", "concat"),
                            Block(2, 0, "conv_1x1", "avg_pool_3x3", "add")), concat=(2, 3))

    class SupernetPath(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, h, h_prev):
            return self.cell(h, h_prev, spec)

    return SupernetPath(), lambda b, g: [_randn(g, b, c, 32, 32), _randn(g, b, c, 32, 32)], "channels_last"


# The network-level cases use this cell pair: every op but max pooling (see the module docstring), identity
# and 1x1 conv at stride 2 on a cell input (the first cases of oneDNN#6035 the project met), both combines
# and an input state in the output.
SWEEP_GENOTYPE = {
    "name": "layout_sweep",
    "normal": {"blocks": [[0, 1, "sep_conv_3x3", "identity", "add"],
                          [1, 2, "conv_1x3_3x1", "avg_pool_3x3", "concat"],
                          [0, 3, "dil_conv_3x3", "conv_3x3", "add"],
                          [2, 4, "sep_conv_5x5", "conv_1x1", "add"],
                          [1, 0, "conv_1x7_7x1", "sep_conv_7x7", "add"]],
               "concat": [1, 5, 6]},
    "reduce": {"blocks": [[0, 1, "identity", "conv_1x1", "add"],
                          [0, 1, "sep_conv_3x3", "avg_pool_3x3", "concat"],
                          [2, 1, "conv_3x3", "sep_conv_5x5", "add"],
                          [0, 3, "conv_1x3_3x1", "dil_conv_3x3", "add"],
                          [1, 4, "sep_conv_7x7", "conv_1x7_7x1", "add"]],
               "concat": [4, 5, 6]},
}


@functools.cache
def _sweep_genotype_file() -> Path:
    """SWEEP_GENOTYPE as the JSON file detection configs name, written once per server: serve() calls this
    before it forks, so the cases share the file and the folder goes when the server exits (a forked case
    leaves by os._exit, which would leak a folder of its own)."""
    folder = tempfile.TemporaryDirectory(prefix="layout-sweep-")
    _KEEP_ALIVE.append(folder)  # removed by its finaliser at the server's exit
    path = Path(folder.name) / "genotype.json"
    path.write_text(json.dumps(SWEEP_GENOTYPE))
    return path


_KEEP_ALIVE: list[tempfile.TemporaryDirectory] = []


def _detection_cfg(kind: str, f: int):
    from nasnet_det.config import load_cfg
    from nasnet_det.detection.config import get_nasnet_cfg

    root = Path(__file__).resolve().parents[2]
    genotype = _sweep_genotype_file()
    cfg = load_cfg(get_nasnet_cfg(), str(root / "configs" / "detection" / f"smoke-nasnet-{kind}.yaml"),
                   ["MODEL.NASNET.GENOTYPE", str(genotype), "MODEL.NASNET.FILTERS", f,
                    "MODEL.NASNET.STEM_FILTERS", max(4, f)])
    return cfg


def _images(b: int, g) -> list:
    # Training-mode BN over a handful of values per channel (a 64 px image gives 2x2 maps at stride 32) makes
    # the gradients ill-conditioned: a 1e-7 change of the input moves some by 1e-3, in any kernel. A single
    # image is 128 px, so that every BN sees at least 16 values.
    size = 128 if b == 1 else 64
    return [_randn(g, b, 3, size, size)]


def _fpn_backbone(f: int, stride: int) -> Built:
    from detectron2.modeling import build_backbone

    return build_backbone(_detection_cfg("fpn", f)), _images, "nchw"


def _c4_backbone(f: int, stride: int) -> Built:
    from detectron2.modeling import build_backbone

    return build_backbone(_detection_cfg("c4", f)), _images, "nchw"


def _c4_crop_head(f: int, stride: int) -> Built:
    """The C4 second stage (reduction_cell_1 + stack 3) on ROI crops: ``batch`` is the number of crops."""
    from nasnet_det.detection.heads import build_nasnet_crop_head

    head = build_nasnet_crop_head(_detection_cfg("c4", f))
    return head, lambda b, g: [_randn(g, b, head.in_channels, 7, 7)], "nchw"


def _rpn_head(c: int, stride: int) -> Built:
    """detectron2's StandardRPNHead on C-channel features of three FPN levels, as the backbone gives them."""
    from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
    from torch import nn

    class RPNHeadOnLevels(nn.Module):  # the head takes a list of levels; the sweep passes tensors
        def __init__(self):
            super().__init__()
            self.head = StandardRPNHead(in_channels=c, num_anchors=3, box_dim=4)

        def forward(self, *levels):
            return self.head(list(levels))

    return RPNHeadOnLevels(), lambda b, g: [_randn(g, b, c, s, s) for s in (32, 16, 8)], "channels_last"


def _scale_grad():
    import torch

    class ScaleGrad(torch.autograd.Function):
        """Identity forward; the gradient times ``scale`` (a fault that only a gradient comparison sees)."""
        @staticmethod
        def forward(ctx, x, scale):
            ctx.scale = scale
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return g * ctx.scale, None
    return ScaleGrad


def _cifar_network(preset: str, sweep_genotype: bool) -> Callable[[int, int], Built]:
    """A whole CIFAR network of one cell per stack, with the auxiliary head where the preset has one:
    NASNet-A (the issue's 1@4 / 1@8 reports) or a search child of the sweep's cell (identity and 1x1 conv at
    stride 2 on a cell input, where oneDNN#6035 hung the search)."""
    def build(f: int, stride: int) -> Built:
        from torch import nn

        from nasnet_det.models import create_model
        from nasnet_det.space import Genotype

        overrides = {"genotype": Genotype.from_dict(SWEEP_GENOTYPE)} if sweep_genotype else {}
        model = create_model(preset, num_cells=1, filters=f, **overrides)

        class WithAux(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = model

            def forward(self, x):
                logits, aux = self.net(x, return_aux=True)
                return logits if aux is None else (logits, aux)

        # Batch 1 gives the aux head's BN one value per channel, which training-mode BN refuses: 2 is the least
        return WithAux(), lambda b, g: [_randn(g, max(2, b), 3, 32, 32)], "nchw"
    return build


def _selftest(fault: str) -> Callable[[int, int], Built]:
    """Kinds that fail on purpose, for the sweep's own test: its verdicts must be able to say no."""
    def build(c: int, stride: int) -> Built:
        import time as _time

        import torch
        from torch import nn

        _ScaleGrad = _scale_grad()

        class Faulty(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(c, c, 1, bias=False)
                self.small = nn.Parameter(torch.zeros(c, 1, 1))  # its gradient is ~1/100 of conv's
                self.act = nn.ReLU()

            def forward(self, x):
                if fault == "kink":
                    # Not a fault: a ReLU input within rounding of zero. Image 0's channel 0 is KINK_INPUT, and
                    # float32 rounds 1 + 2^-25 to 1, so (x + 1) - 1 - 2^-26 is -2^-26 there while float64 keeps
                    # +2^-26: that channel's gradient is zero in float32 and whole in float64 (issue 31's case,
                    # made deterministic). Correct kernels on both sides: the sweep must pass it.
                    x = self.act((x + 1.0) - 1.0 - KINK_INPUT / 2)
                y = self.conv(x)
                if fault == "wrong" and x.is_contiguous(memory_format=torch.channels_last) and c > 1:
                    y = y * 1.01  # wrong only in the default layout
                elif fault == "small_param":  # one small parameter gradient 5% off, in the default layout only
                    scale = 1.05 if x.is_contiguous(memory_format=torch.channels_last) and c > 1 else 1.0
                    y = y + _ScaleGrad.apply(self.small, scale) * 1e-2
                elif fault == "segfault":
                    os.kill(os.getpid(), signal.SIGSEGV)
                elif fault == "hang":
                    _time.sleep(3600)
                elif fault == "damage":  # passes, but marks its process, as a kernel overwriting memory might
                    DAMAGED.append(c)
                elif fault == "fragile" and DAMAGED and x.is_contiguous(memory_format=torch.channels_last):
                    y = y * 1.01  # wrong only in a process an earlier case damaged
                elif fault == "stall" and DAMAGED:
                    _time.sleep(3600)  # slow only in a process an earlier case damaged: a hang there, a pass alone
                return y
        def make_inputs(b, g):
            x = _randn(g, b, c, 8, 8)
            if fault == "kink":
                x[0, 0] = KINK_INPUT
            return [x]
        return Faulty(), make_inputs, "channels_last"
    return build


DAMAGED: list[int] = []  # selftest_damage's mark on the process it ran in
KINK_INPUT = 2.0 ** -25  # selftest_kink's: below half of float32's spacing at 1 (2^-24)


def _module_kinds() -> dict[str, ModuleKind]:
    from nasnet_det.space import OPS  # torch-free: the parent process lists cases without torch

    kinds = [ModuleKind(op, (2,) if op == "identity" else (1, 2), _op_builder(op)) for op in OPS]
    kinds += [
        ModuleKind("factorized_reduce", (1, 2), _factorized_reduce),
        ModuleKind("stem", (1, 2), _stem),  # stride 1: the CIFAR stem, stride 2: the ImageNet stem
        ModuleKind("aux_head", (1,), _aux_head),
        ModuleKind("supernet_cell", (1, 2), _supernet_cell),
        # f >= 8: the ImageNet stem cells use f/4 filters and a factorized reduction needs 2 of them
        ModuleKind("fpn_backbone", (1,), _fpn_backbone, min_channels=8, warm_channels=64, timeout_scale=5),
        ModuleKind("c4_backbone", (1,), _c4_backbone, min_channels=8, warm_channels=64, timeout_scale=5),
        ModuleKind("c4_crop_head", (1,), _c4_crop_head, min_channels=8, warm_channels=64, timeout_scale=5),
        ModuleKind("cifar_nasnet_a", (1,), _cifar_network("nasnet_a_cifar", False), min_channels=2,
                   warm_channels=32, timeout_scale=5),
        ModuleKind("search_child", (1,), _cifar_network("search_child_tiny", True), min_channels=2,
                   warm_channels=32, timeout_scale=5),
        ModuleKind("rpn_head", (1,), _rpn_head),
    ]
    kinds += [ModuleKind(f"selftest_{fault}", (1,), _selftest(fault))
              for fault in ("wrong", "small_param", "segfault", "hang", "kink", "damage", "fragile", "stall")]
    return {k.name: k for k in kinds}


MODULE_KINDS = _module_kinds()
MODULE_NAMES = tuple(n for n in MODULE_KINDS if not n.startswith("selftest_"))  # what the project runs


def cases(modules: Iterable[str] = MODULE_NAMES, channels: Iterable[int] = CHANNELS,
          batches: Iterable[int] = BATCHES, threads: Iterable[int] = THREADS,
          strides: Iterable[int] = (1, 2)) -> list[Case]:
    """The sweep's cases (without importing torch: the parent process never needs it)."""
    out = []
    for m in modules:
        if m not in MODULE_KINDS:
            raise ValueError(f"unknown module {m!r}; known: {', '.join(MODULE_NAMES)}")
        kind = MODULE_KINDS[m]
        for s in kind.strides:
            if s not in strides:
                continue
            for c in channels:
                if c < kind.min_channels:
                    continue
                for b in batches:
                    for t in threads:
                        out.append(Case(m, s, c, b, t))
    return out


# The whole-network kinds take f (the first stack's filters) on the channel axis: their convolutions see
# f/4 .. 4f x the cell's concat width channels.
NETWORK_KINDS = ("fpn_backbone", "c4_backbone", "c4_crop_head", "cifar_nasnet_a", "search_child")
NETWORK_FILTERS = {"cifar_nasnet_a": (2, 4, 6, 8), "search_child": (2, 4, 6, 8)}
DETECTION_FILTERS = (8, 9, 10, 11, 12, 16, 24, 32)  # the other network kinds'
# The kinds that run a strided 1x1 convolution (oneDNN#6035's kernel): CI runs each of their stride-2
# channel counts below one AVX-512 channel block with every (batch, threads) pair, not one.
STRIDED_1X1_KINDS = ("identity", "conv_1x1", "supernet_cell")


def rotated_cases(offset: int = 0, max_channels: int = CHANNELS[-1]) -> list[Case]:
    """What CI runs: every module x stride x channel count up to ``max_channels`` (f in :func:`network_filters`
    up to ``max_channels`` for the networks), each with one (batch, threads) pair, rotated through the channel
    counts so that every pair meets every module and stride; ``offset`` (one per ISA) shifts the rotation. The
    stride-2 cases of STRIDED_1X1_KINDS below 16 channels run with every pair."""
    pairs = [(b, t) for b in BATCHES for t in THREADS]
    out = []
    for k, name in enumerate(MODULE_NAMES):
        kind = MODULE_KINDS[name]
        channels = [f for f in network_filters(name) if f <= max_channels] if name in NETWORK_KINDS else [
            c for c in CHANNELS if kind.min_channels <= c <= max_channels]
        for s in kind.strides:
            for i, c in enumerate(channels):
                if name in STRIDED_1X1_KINDS and s == 2 and c < 16:
                    out += [Case(name, s, c, b, t) for b, t in pairs]
                    continue
                b, t = pairs[(i + k + s + offset) % len(pairs)]
                out.append(Case(name, s, c, b, t))
    return out


def network_filters(name: str) -> tuple[int, ...]:
    """The f values CI runs a whole-network kind at."""
    return NETWORK_FILTERS.get(name, DETECTION_FILTERS)


# ------------------------------------------------------------------------------------------- comparison
class ReluReplay:
    """Record the ReLU masks of the tested run, and replay them in the reference runs.

    Where a ReLU input lies within float rounding of zero, the two computations may land on either side of
    the kink, which moves that element's whole gradient: a difference of the arbitrary choice at the kink,
    not of any kernel. Replaying the tested run's masks makes the reference compute, exactly, the function
    on the same linear piece; every other element is unchanged. (Every ReLU the compared modules run is an
    ``nn.ReLU`` module, detectron2's RPN head's too, so forward hooks see them all.)"""

    def __init__(self) -> None:
        self.masks: dict[str, list] = {}
        self.flipped = 0  # elements whose own ReLU input, in a replay with count=True, had the other sign

    def record(self, module) -> list:
        from torch import nn

        def hook(name):
            def f(mod, args, out):
                self.masks.setdefault(name, []).append(out.detach() > 0)
            return f
        return [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if isinstance(m, nn.ReLU)]

    def replay(self, module, count: bool = False) -> list:
        """Hooks that replace each ReLU's mask by the recorded one; with ``count``, the elements where the
        module's own mask differs are added to ``flipped`` (so that a report can say the replay mattered)."""
        from torch import nn

        calls: dict[str, int] = {}

        def hook(name):
            def f(mod, args, out):
                i = calls.get(name, 0)
                calls[name] = i + 1
                mask = self.masks[name][i]
                if count:
                    self.flipped += int(((out > 0) != mask).sum())
                return args[0] * mask.to(args[0].dtype)
            return f
        return [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if isinstance(m, nn.ReLU)]


def _reference(module):
    """An NCHW copy (the NASNet layout flags off: they would convert inputs to channels_last) that computes
    strided 1x1 convolutions as plain strided convolutions, not through the workaround under test."""
    import torch

    from nasnet_det.models.ops import Conv2dSame

    ref = copy.deepcopy(module)
    for m in ref.modules():
        if hasattr(m, "channels_last") and isinstance(m.channels_last, bool):
            m.channels_last = False
        if isinstance(m, Conv2dSame):
            m.subsample = False
    return ref.to(memory_format=torch.contiguous_format)


def _flatten(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"unexpected module output {type(out).__name__}")


def _run(module, inputs: list, layout: str, grad_seed: int, dtype, hooks: list = ()) -> dict[str, object]:
    """Forward + backward with fixed random output gradients; returns named tensors to compare. ``hooks``
    (handles) are removed afterwards."""
    import torch

    xs = []
    for x in inputs:
        x = x.detach().to(dtype, copy=True)
        x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()
        xs.append(x.requires_grad_())
    outs = _flatten(module(*xs))
    g = torch.Generator().manual_seed(grad_seed)
    grads = []
    for y in outs:
        dy = torch.randn(y.shape, generator=g).to(dtype)
        if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
            dy = dy.contiguous(memory_format=torch.channels_last)
        grads.append(dy)
    torch.autograd.backward(outs, grads)
    for h in hooks:
        h.remove()
    named: dict[str, object] = {f"output {i}": y.detach() for i, y in enumerate(outs)}
    named.update({f"input {i} gradient": x.grad for i, x in enumerate(xs)})
    params = {f"{n} gradient": p.grad for n, p in module.named_parameters() if p.grad is not None}
    return {"tensors": named, "params": params}


def _difference(a, r, scale: float) -> float:
    num = (a.double() - r).norm().item()
    return num / scale if scale > 0 else num


def compare(test: dict, plain: dict, truth: dict) -> tuple[float, str]:
    """(largest ratio of the default layout's difference to what it may be, and where) over every output,
    input gradient and parameter gradient; a ratio above 1 fails.

    Differences are measured from the float64 result: an output or input gradient relative to its own norm,
    a parameter gradient relative to the module's largest parameter gradient (a gradient that cancels to
    nearly zero, e.g. of a 1-channel conv or BN scale before a scale-invariant BatchNorm, has no meaningful
    relative error of its own: see the module docstring). A tensor may differ by TOLERANCE, or by ALLOWANCE x
    the plain float32 computation's own difference where that is larger (an ill-conditioned sum is inexact in
    any order), up to MAX_ALLOWED."""
    import math

    worst, where = 0.0, "nothing"
    param_scale = max((r.norm().item() for r in truth["params"].values()), default=0.0)
    for group in ("tensors", "params"):
        if set(test[group]) != set(truth[group]):
            return math.inf, f"different tensors on the two sides: {sorted(set(test[group]) ^ set(truth[group]))}"
        for name, r in truth[group].items():
            a, p = test[group][name], plain[group][name]
            if a is None or r is None:
                if (a is None) != (r is None):
                    return math.inf, f"{name} missing on one side"
                continue
            scale = param_scale if group == "params" else r.norm().item()
            e, e_plain = _difference(a, r, scale), _difference(p, r, scale)
            if not math.isfinite(e):
                return math.inf, f"{name} is not finite"
            allowed = min(MAX_ALLOWED, max(TOLERANCE, ALLOWANCE * e_plain))
            if e / allowed > worst:
                worst, where = e / allowed, f"{name}: {e:.3g} from float64, plain float32 {e_plain:.3g}"
    return worst, where


def run_case(case: Case) -> tuple[float, str]:
    """Build the module; run it in its default layout (float32), plain (NCHW float32, oneDNN off) and exactly
    (NCHW float64, oneDNN off); compare."""
    import torch

    torch.set_num_threads(case.threads)
    torch.manual_seed(case.channels * 1000 + case.stride)
    module, make_inputs, layout = MODULE_KINDS[case.module].build(case.channels, case.stride)
    module.train()
    plain = _reference(module)
    exact = copy.deepcopy(plain).double()
    if layout == "channels_last":  # a lone op is run the way a NASNet runs it
        module = module.to(memory_format=torch.channels_last)
    inputs = make_inputs(case.batch, torch.Generator().manual_seed(case.batch + case.channels))
    relus = ReluReplay()
    test = _run(module, inputs, layout, 1, torch.float32, relus.record(module))
    with torch.backends.mkldnn.flags(enabled=False):
        plain_result = _run(plain, inputs, "nchw", 1, torch.float32, relus.replay(plain))
        truth = _run(exact, inputs, "nchw", 1, torch.float64, relus.replay(exact, count=True))
    ratio, where = compare(test, plain_result, truth)
    if relus.flipped:
        where += (f" ({relus.flipped} ReLU input{'s' if relus.flipped > 1 else ''} within rounding of zero had the "
                  f"other sign in float64; the reference took the tested run's side)")
    return ratio, where


# ------------------------------------------------------------------------------------------ case server
def serve(stream_in, stream_out, timeout_s: float, warm: Sequence[str] = ()) -> None:
    """Read JSON cases from ``stream_in``, run each in a forked child under ``timeout_s``, write one JSON
    outcome line each. The module kinds in ``warm`` are run once first, with one thread (see ModuleKind)."""
    import torch

    torch.set_num_threads(1)
    _sweep_genotype_file()  # before any fork: one file for every case
    for name in warm:
        kind = MODULE_KINDS[name]
        try:
            run_case(Case(name, kind.strides[0], kind.warm_channels, 2, 1))
        except Exception:  # noqa: BLE001 - the case itself will report it
            pass
    # A smaller parent forks faster: return the warm-up's freed heap to the OS, and keep the garbage collector
    # from touching (and so copying) the parent's objects in every child.
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    gc.freeze()
    for line in stream_in:
        if not line.strip():
            continue
        for outcome in run_batch([Case(**c) for c in json.loads(line)], timeout_s):
            stream_out.write(json.dumps(outcome) + "\n")
            stream_out.flush()


def run_batch(batch: Sequence[Case], timeout_s: float) -> Iterator[dict]:
    """The outcome of each case of ``batch``, in order, each as soon as it is known. The cases run one after
    another in one forked process (a fork per case cost as much as a small case itself); after the first that
    does not pass there, the rest go on in a new fork. A failure is judged on the case alone, as when every case
    had its own fork: one that failed after other cases runs again in a fresh fork, and a case that fails there,
    or failed first in its fork, is reported as it failed -- except a hang, tried once more with twice its limit
    (a busy machine must not pass for a hung kernel). A case that failed after others but passes alone is still
    a failure, said so (an earlier case may have damaged the process, as oneDNN#6035's kernel overwrote the heap);
    a hang that passes alone was a slow machine."""
    i = 0
    while i < len(batch):
        ran, failure = 0, None
        for outcome in _forked(batch[i:], timeout_s):
            if outcome["status"] == "ok":
                yield outcome
                ran += 1
            else:
                failure = outcome
        i += ran
        if failure is None:
            continue
        case = batch[i]
        if ran:  # it ran after other cases: judged alone
            alone = _alone(case, timeout_s)
            if alone["status"] == "ok":
                earlier = batch[i - ran:i]
                named = earlier[0].describe() + (f" .. {earlier[-1].describe()}" if ran > 1 else "")
                yield alone if failure["status"] == "hang" else {
                    **failure, "detail": f"{failure['detail']} (after {ran} other case{'s' if ran > 1 else ''} in "
                                         f"one process: {named}); alone it passed: an earlier case may have "
                                         f"damaged the process, or the case is not deterministic"}
                i += 1
                continue
            failure = alone
        if failure["status"] == "hang":
            again = _alone(case, 2 * timeout_s)
            failure = {**again, "seconds": again["seconds"] + failure["seconds"]}
            if failure["status"] == "hang":
                limit = case_time_limit(case, timeout_s)
                failure["detail"] = f"no result after {limit:.0f} s, nor after {2 * limit:.0f} s on a second try"
        yield failure
        i += 1


def _alone(case: Case, timeout_s: float) -> dict:
    """``case``'s outcome in a fork of its own."""
    return list(_forked([case], timeout_s))[-1]


def case_time_limit(case: Case, timeout_s: float) -> float:
    """A case's first time limit: the sweep's, scaled for its kind."""
    return timeout_s * MODULE_KINDS[case.module].timeout_scale


def _forked(case_list: Sequence[Case], timeout_s: float) -> Iterator[dict]:
    """Run ``case_list`` one after another in a forked child, each under ``timeout_s`` scaled for its kind (the
    fork's start counts to the first case), stopping at the first that does not pass: the outcome of each case
    as it ends, the last one how it failed or how the child died (with the last line it wrote to stderr, e.g.
    glibc's "free(): invalid next size" when a kernel overwrote the heap), if one did."""
    read_fd, write_fd = os.pipe()
    stderr = tempfile.TemporaryFile()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the case process
        os.close(read_fd)
        os.dup2(stderr.fileno(), 2)
        code = 0
        for case in case_list:
            began = time.monotonic()
            try:
                ratio, where = run_case(case)
                result = {"status": "ok" if ratio <= 1.0 else "mismatch", "error": ratio,
                          "detail": f"{ratio:.3g} x the allowed difference at {where}"}
            except Exception as e:  # noqa: BLE001 - reported as the case's outcome
                result = {"status": "error", "detail": f"{type(e).__name__}: {e}"}
            except BaseException as e:  # noqa: BLE001
                result, code = {"status": "error", "detail": f"{type(e).__name__}: {e}"}, 1
            os.write(write_fd, (json.dumps({**result, "seconds": time.monotonic() - began}) + "\n").encode())
            if result["status"] != "ok":
                break
        os._exit(code)
    os.close(write_fd)
    reader = LineReader(read_fd)
    passed = 0
    deadline = start + case_time_limit(case_list[0], timeout_s)
    try:
        while passed < len(case_list):
            line = reader.readline(deadline)
            if line is not None:
                result = json.loads(line)
                yield result
                if result["status"] != "ok":
                    return
                passed += 1
                if passed < len(case_list):
                    deadline = time.monotonic() + case_time_limit(case_list[passed], timeout_s)
                continue
            if not reader.eof:  # no result in time
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            pid = 0
            if not reader.eof:
                limit = case_time_limit(case_list[passed], timeout_s)
                failure = {"status": "hang", "detail": f"no result after {limit:.0f} s (killed)"}
            else:
                stderr.seek(0)
                said = [ln.strip() for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
                last_words = f" (it wrote: {said[-1][:200]})" if said else ""
                if os.WIFSIGNALED(status):
                    detail = f"killed by {signal.Signals(os.WTERMSIG(status)).name}{last_words}"
                else:
                    detail = f"exited with code {os.WEXITSTATUS(status)} and no result{last_words}"
                failure = {"status": "crash", "detail": detail}
            yield {**failure, "seconds": time.monotonic() - start}
            return
    finally:
        if pid:
            os.waitpid(pid, 0)
        os.close(read_fd)
        stderr.close()


# ------------------------------------------------------------------------------------------------ driver
def _isa_env(isa: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    env["PYTHONWARNINGS"] = "ignore"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def sweep(case_list: Sequence[Case], isa: str = "native", timeout_s: float = CASE_TIMEOUT_S,
          progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``case_list`` under one ISA cap in a case server; one :class:`Outcome` per case. The server is
    restarted if it dies (it should not: every case runs in a child)."""
    outcomes: list[Outcome] = []
    pending = list(case_list)
    while pending:
        warm = ",".join(dict.fromkeys(c.module for c in pending if c.module in MODULE_NAMES))
        proc = subprocess.Popen([sys.executable, __file__, "--serve", "--case-timeout", str(timeout_s),
                                 "--modules", warm],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_isa_env(isa))
        try:
            for out in _drive(proc, pending, isa, timeout_s):
                outcomes.append(out)
                pending.pop(0)
                if progress:
                    progress(out)
        finally:
            if proc.poll() is None:  # done (or the server hangs): end of input lets it exit and clean up
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.wait()
        if pending:  # the server itself died: its case counts as a crash
            out = Outcome(pending.pop(0), isa, "crash", "the case server died")
            outcomes.append(out)
            if progress:
                progress(out)
    return outcomes


# cases per forked process (run_batch): the fork's own cost is paid once per batch, not per case
BATCH_SIZE = 32


def _drive(proc: subprocess.Popen, pending: list[Case], isa: str, timeout_s: float) -> Iterator[Outcome]:
    assert proc.stdin and proc.stdout
    reader = LineReader(proc.stdout.fileno())  # a batch's answers arrive together: read unbuffered
    todo = list(pending)
    while todo:
        batch, todo = todo[:BATCH_SIZE], todo[BATCH_SIZE:]
        proc.stdin.write(json.dumps([dataclasses.asdict(c) for c in batch]) + "\n")
        proc.stdin.flush()
        for case in batch:
            # The server enforces the case limit (a case that ran after others and hung may take four of its
            # limits: there, alone, and alone with twice the time); this one only guards against the server
            # itself hanging (its warm-up comes before the first answer).
            line = reader.readline(time.monotonic() + 4 * case_time_limit(case, timeout_s) + 300)
            if line is None:
                return
            r = json.loads(line)
            yield Outcome(case, isa, r["status"], r.get("detail", ""), r.get("error", 0.0), r.get("seconds", 0.0))


def available_isas(wanted: Iterable[str] = ISAS) -> list[str]:
    """The ISA caps worth running here: "native", plus each cap below what this CPU has (a cap above the
    CPU's ISA runs the native kernels again)."""
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    out = []
    for isa in wanted:
        if isa == "native":
            out.append(isa)
        elif isa.upper().startswith("AVX2") and " avx2" in flags and " avx512f" in flags:
            out.append(isa)  # AVX2 kernels differ from the native (AVX-512) ones only on an AVX-512 CPU
        elif isa.upper().startswith("AVX512") and " amx" in flags:
            out.append(isa)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case-timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case")
    p.add_argument("--modules", default=",".join(MODULE_NAMES), help="comma-separated (default: all)")
    p.add_argument("--channels", default="1-32", help="e.g. 1-32 or 1,3,8")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--isa", default=",".join(ISAS),
                   help="native and/or ONEDNN_MAX_CPU_ISA values (e.g. AVX2, AVX512_CORE); caps this CPU "
                        "cannot run are skipped")
    p.add_argument("--json", help="write every outcome to this file")
    args = p.parse_args(argv)
    if args.serve:
        serve(sys.stdin, sys.stdout, args.case_timeout, [m for m in args.modules.split(",") if m])
        return 0

    def ints(text: str) -> list[int]:
        out: list[int] = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        return out

    case_list = cases(args.modules.split(","), ints(args.channels), ints(args.batches), ints(args.threads))
    isas = available_isas(args.isa.split(","))
    print(f"{len(case_list)} cases x ISA {', '.join(isas)}", flush=True)
    all_outcomes: list[Outcome] = []
    t0 = time.monotonic()
    for isa in isas:
        def show(o: Outcome) -> None:
            if o.failed:
                print("FAIL", o.describe(), flush=True)
        all_outcomes += sweep(case_list, isa, args.case_timeout, show)
    failed = [o for o in all_outcomes if o.failed]
    worst: dict[str, float] = {}
    for o in all_outcomes:
        if o.status == "ok":
            worst[o.case.module] = max(worst.get(o.case.module, 0.0), o.error)
    for m, e in worst.items():
        print(f"  {m:18s} largest passing ratio to the allowed difference {e:.2g}")
    print(f"{len(failed)} failed of {len(all_outcomes)} in {time.monotonic() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([{**dataclasses.asdict(o.case), "isa": o.isa, "status": o.status,
                                                "detail": o.detail, "error": o.error, "seconds": o.seconds}
                                               for o in all_outcomes], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
