"""A one-shot (ENAS-style) supernet over the full NASNet space: every cell sampled by the controller is a
path through one set of shared weights.

Layout: the CIFAR skeleton of :class:`nasnet_det.models.NASNet` (3x3 stem to 3f, then its cells stacked by
:func:`nasnet_det.models.nasnet.stack_cells`: 3 stacks of N normal cells, a reduction cell before stacks 2 and 3,
filters f, 2f, 4f). Each :class:`SuperCell` holds, for every block
``b`` and both of its slots (left / right):

* all 13 operations of :data:`nasnet_det.space.OPS`, built by the child networks' own
  :func:`nasnet_det.models.ops.build_op`. The op weights of a slot are shared by every input index it may
  read (as NNI's legacy ENAS port does), except that a reduction cell keeps two tables per slot: stride 2
  for the cell inputs (states 0/1, which have twice the resolution) and stride 1 for earlier blocks, exactly
  where the child networks use those strides;
* a shared 1x1 projection (ReLU-conv-BN, 2C -> C) for the ``concat`` combine.

Channel counts stay constant inside the supernet: every state has C channels. ``add`` sums the two C-channel
op outputs; ``concat`` concatenates them (2C) and projects back to C with the block's projection, so a later
block, and the cell output, see C channels whatever was chosen. The cell output follows ENAS: the states of
the cell's concat list (the paper's loose ends) each go through their own 1x1 conv to C and are summed, then
one BN, which is exactly ENAS's "concat the loose ends, 1x1 conv with the weights gathered by state index"
and keeps the cell output at C channels for any cell. A sampled cell's loose ends are block states only
(:func:`nasnet_det.space.unused_states`), but a published cell may also concatenate a cell input (NASNet-A's
normal cell keeps ``h_{i-1}``); ``loose_inputs=True`` gives the two input states their own output convs too,
for the estimators that score such cells (they train those convs by adding each input to the sampled paths'
concat lists half of the time, :func:`with_loose_inputs`). The child network trained alone has ``add`` blocks of
C and ``concat`` blocks of 2C and an output of (sum of loose-end widths) channels; the supernet's approximation
of those wider layers is the projections above.

BatchNorm in the supernet uses the batch's statistics (``track_running_stats=False``), in training and when
scoring, as ENAS does: running statistics shared by all paths would describe none of them. The alternative,
:func:`recalibrate_bn`, recomputes running statistics for one path before it is scored.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from nasnet_det.models.nasnet import stack_cells
from nasnet_det.models.ops import Conv2dSame, FactorizedReduce, NormFactory, ReLUConvBN, build_op
from nasnet_det.search_space import SearchSpace
from nasnet_det.space import NUM_INPUTS, OPS, CellSpec, Genotype

SIDES = ("left", "right")


def _table_key(block: int, side: str, input_index: int, reduction: bool) -> str:
    """Which op table serves ``input_index``: in a reduction cell the cell inputs need stride-2 ops."""
    kind = "in" if reduction and input_index < NUM_INPUTS else "st"
    return f"b{block}_{side}_{kind}"


class UnscorableCellError(ValueError):
    """A valid cell that this supernet has no path for (a cell input among its loose ends, without
    ``loose_inputs``): an estimator built on it cannot score the cell."""


class SuperCell(nn.Module):
    """All cells of one position (normal or reduction) with shared weights; ``forward(h, h_prev, spec)``
    runs the path of ``spec``. ``h_prev=None`` (first cell) uses ``h`` as both inputs."""

    def __init__(self, num_blocks: int, c_in: int, c_prev: int, filters: int, reduction: bool,
                 prev_stride: int, norm: NormFactory, pad_mode: str = "tf", loose_inputs: bool = False):
        super().__init__()
        self.num_blocks, self.reduction, self.filters = num_blocks, reduction, filters
        self.loose_inputs = loose_inputs
        c = filters
        self.preprocess_0 = ReLUConvBN(c_in, c, 1, 1, norm)
        if prev_stride == 2:
            self.preprocess_1 = FactorizedReduce(c_prev, c, 2, norm)
        else:
            self.preprocess_1 = ReLUConvBN(c_prev, c, 1, 1, norm)
        self.ops = nn.ModuleDict()
        for b in range(num_blocks):
            for side in SIDES:
                kinds = [("st", 1)] if not reduction else [("in", 2)] + ([("st", 1)] if b > 0 else [])
                for kind, stride in kinds:
                    self.ops[f"b{b}_{side}_{kind}"] = nn.ModuleDict(
                        {op: build_op(op, c, c, stride, norm, pad_mode) for op in OPS})
        self.concat_proj = nn.ModuleList(ReLUConvBN(2 * c, c, 1, 1, norm) for _ in range(num_blocks))
        self.out_act = nn.ReLU()
        self.out_conv = nn.ModuleList(nn.Conv2d(c, c, 1, bias=False) for _ in range(num_blocks))
        self.out_bn = norm(c)
        self.out_channels = c
        if loose_inputs:
            # on a forked RNG: every other weight is initialised as in a supernet without them
            # (a reduction cell's inputs have twice its resolution: the child network's factorized reduction)
            with torch.random.fork_rng(devices=[]):
                self.input_out_conv = nn.ModuleList(
                    FactorizedReduce(c, c, 2, norm, relu=False) if reduction else nn.Conv2d(c, c, 1, bias=False)
                    for _ in range(NUM_INPUTS))

    def output_conv(self, state: int) -> nn.Module:
        """The 1x1 conv that brings loose end ``state`` into the cell output."""
        return self.input_out_conv[state] if state < NUM_INPUTS else self.out_conv[state - NUM_INPUTS]

    def op_module(self, block: int, side: str, input_index: int, op: str) -> nn.Module:
        """The shared module that runs ``op`` on ``input_index`` in slot ``side`` of ``block``."""
        return self.ops[_table_key(block, side, input_index, self.reduction)][op]

    def check_spec(self, spec: CellSpec, where: str = "cell") -> None:
        spec.validate(where, self.num_blocks)
        inputs_out = [i for i in spec.concat if i < NUM_INPUTS]
        if inputs_out and not self.loose_inputs:
            raise UnscorableCellError(f"{where}: this supernet's cell output is built from block states only (a "
                                      f"supernet built with loose_inputs=True also takes cell inputs); concat list "
                                      f"{list(spec.concat)} contains input state(s) {inputs_out}")

    def forward(self, h: torch.Tensor, h_prev: torch.Tensor | None, spec: CellSpec) -> torch.Tensor:
        states = [self.preprocess_0(h), self.preprocess_1(h if h_prev is None else h_prev)]
        for b, block in enumerate(spec.blocks):
            left = self.op_module(b, "left", block.input_1, block.op_1)(states[block.input_1])
            right = self.op_module(b, "right", block.input_2, block.op_2)(states[block.input_2])
            if block.combine == "add":
                states.append(left + right)
            else:
                states.append(self.concat_proj[b](torch.cat([left, right], 1)))
        out = sum(self.output_conv(i)(self.out_act(states[i])) for i in spec.concat)
        return self.out_bn(out)


class SuperNet(nn.Module):
    """The CIFAR NASNet skeleton (N normal cells per stack, ``filters`` f) made of :class:`SuperCell` s.
    ``forward(x, genotype)`` returns the logits of the child network ``genotype`` with shared weights."""

    def __init__(self, num_blocks: int = 5, num_cells: int = 1, filters: int = 8, num_classes: int = 10,
                 bn_eps: float = 1e-5, pad_mode: str = "tf", in_chans: int = 3, channels_last: bool = True,
                 track_running_stats: bool = False, loose_inputs: bool = False):
        super().__init__()
        if num_blocks < 1 or num_cells < 1 or filters < 2:
            raise ValueError(f"need num_blocks >= 1, num_cells >= 1 and filters >= 2, got B={num_blocks}, "
                             f"N={num_cells}, f={filters}")
        self.num_blocks, self.num_cells, self.filters = num_blocks, num_cells, filters
        self.arch = dict(num_blocks=num_blocks, num_cells=num_cells, filters=filters, num_classes=num_classes,
                         bn_eps=bn_eps, pad_mode=pad_mode, in_chans=in_chans)
        # track_running_stats: keep running statistics, for recalibrate_bn (training still uses the batch's)
        norm = functools.partial(nn.BatchNorm2d, eps=bn_eps, track_running_stats=track_running_stats)
        stem = 3 * filters
        self.conv0 = nn.Sequential()
        self.conv0.add_module("conv", Conv2dSame(in_chans, stem, 3, 1))
        self.conv0.add_module("bn", norm(stem))

        def make_cell(name: str, reduction: bool, c_in: int, c_prev: int | None, cell_filters: int,
                      prev_stride: int) -> SuperCell:
            return SuperCell(num_blocks, c_in, c_in if c_prev is None else c_prev, cell_filters, reduction,
                             prev_stride, norm, pad_mode, loose_inputs)

        plans, channels, _ = stack_cells(self, num_cells, filters, stem, 1, make_cell)  # NASNet's CIFAR skeleton
        self.plan: list[tuple[str, str, str | None, bool]] = [(p.name, p.h, p.h_prev, p.reduction) for p in plans]
        self.act = nn.ReLU()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(channels[plans[-1].name], num_classes)
        # The memory layout (not in arch), as NASNet.set_channels_last: NHWC trains faster on a CPU.
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def check_genotype(self, genotype: Genotype) -> None:
        """``ValueError`` naming the cell when ``genotype`` is not a path of this supernet."""
        first_normal = next(getattr(self, n) for n, _, _, r in self.plan if not r)
        first_reduce = next(getattr(self, n) for n, _, _, r in self.plan if r)
        first_normal.check_spec(genotype.normal, "normal cell")
        first_reduce.check_spec(genotype.reduce, "reduction cell")

    def forward(self, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = {"conv0": self.conv0(x)}
        for name, h, h_prev, reduction in self.plan:
            spec = genotype.reduce if reduction else genotype.normal
            outputs[name] = getattr(self, name)(outputs[h], outputs[h_prev] if h_prev else None, spec)
        feats = self.global_pool(self.act(outputs[self.plan[-1][0]])).flatten(1)
        return self.last_linear(feats)


@torch.no_grad()
def recalibrate_bn(supernet: SuperNet, genotype: Genotype, batches: list[torch.Tensor]) -> None:
    """Recompute every BatchNorm's running statistics for the path of ``genotype`` alone: reset them, then
    average the statistics of ``batches`` (training images, train-mode forward passes, no gradients), so that
    scoring in eval mode uses statistics of this cell instead of the batch's or of a mixture of paths
    (arXiv 2002.04289). Needs a supernet built with ``track_running_stats=True``."""
    bns = [m for m in supernet.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns or not all(m.track_running_stats for m in bns):
        raise ValueError("recalibrate_bn needs a SuperNet built with track_running_stats=True")
    was_training = supernet.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches, not an exponential one
    supernet.train()
    for x in batches:
        supernet(x, genotype)
    supernet.train(was_training)


def with_loose_inputs(genotype: Genotype, generator: torch.Generator, p: float = 0.5) -> Genotype:
    """``genotype`` with each cell input added to each cell's concat list with probability ``p`` (drawn from
    ``generator``): training paths of a ``loose_inputs`` supernet, so that the input states' output convs
    are trained as often as a block's."""
    def extend(spec: CellSpec) -> CellSpec:
        extra = [i for i in range(NUM_INPUTS) if float(torch.rand((), generator=generator)) < p]
        return CellSpec(spec.blocks, tuple(extra) + tuple(spec.concat)) if extra else spec

    return Genotype(extend(genotype.normal), extend(genotype.reduce))


def fair_paths(num_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """13 paths ([13, 2 x 5B] decisions) in which every op slot takes every op exactly once (FairNAS's strict
    fairness); inputs and combines are drawn uniformly."""
    space = SearchSpace(num_blocks)
    paths = space.sample(len(OPS), generator)
    for j in space.op_columns:
        paths[:, j] = torch.randperm(len(OPS), generator=generator)
    return paths
