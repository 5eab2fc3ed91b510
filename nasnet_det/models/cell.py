"""A NASNet cell built from any :class:`~nasnet_det.space.CellSpec` (TF-slim's ``NasNetABaseCell``)."""

from __future__ import annotations

import torch
from torch import nn

from nasnet_det.models.ops import FactorizedReduce, NormFactory, ReLUConvBN, build_op, drop_path
from nasnet_det.space import NUM_INPUTS, CellSpec


def block_multipliers(spec: CellSpec) -> list[int]:
    """Channels of each block output in units of the cell's filter count (add: 1, concat: 2)."""
    return [2 if b.combine == "concat" else 1 for b in spec.blocks]


def output_multiplier(spec: CellSpec) -> int:
    """Cell output channels in units of its filter count. An input state in the concat list is brought to
    the last block's channel count, as slim's ``_combine_unused_states`` does."""
    mult = block_multipliers(spec)
    return sum(mult[-1] if i < NUM_INPUTS else mult[i - NUM_INPUTS] for i in spec.concat)


def unused_inputs(spec: CellSpec) -> tuple[int, ...]:
    """Cell inputs (0 = previous cell, 1 = the one before) that no block reads and the output does not
    concatenate: their 1x1 / factorized-reduce preprocessing gets no gradient."""
    read = {i for b in spec.blocks for i in b.inputs()} | set(spec.concat)
    return tuple(i for i in range(NUM_INPUTS) if i not in read)


def leaves_input_unused(genotype) -> bool:
    """True when the normal or the reduction cell ignores one of its inputs: DDP then needs
    ``find_unused_parameters=True`` (a searched cell may do this; the published ones do not)."""
    return bool(unused_inputs(genotype.normal) or unused_inputs(genotype.reduce))


class Cell(nn.Module):
    """One normal (stride 1) or reduction (stride 2) cell.

    ``forward(h, h_prev)``: ``h`` is the previous cell's output (state 0), ``h_prev`` the one before
    (state 1) or ``None`` for the first cell, in which case the raw ``h`` serves as state 1 (slim).
    ``prev_stride`` is 2 when ``h_prev`` has twice the resolution of ``h`` (the cell after a reduction).
    """

    def __init__(self, spec: CellSpec, c_in: int, c_prev: int | None, filters: int, reduction: bool,
                 prev_stride: int, norm: NormFactory, pad_mode: str = "tf"):
        super().__init__()
        self.spec = spec
        self.reduction = reduction
        self.filters = filters
        self.drop_prob = 0.0  # set by the network's ScheduledDropPath schedule
        self.has_prev = c_prev is not None

        self.conv_1x1 = ReLUConvBN(c_in, filters, 1, 1, norm)
        # The module that adapts state 1, by name (the names map released checkpoints), or None.
        self.state_1_adapter: str | None = None
        if c_prev is None:
            state_1_channels = c_in
        elif prev_stride == 2:
            self.prev_reduce = FactorizedReduce(c_prev, filters, 2, norm)
            self.state_1_adapter, state_1_channels = "prev_reduce", filters
        elif c_prev != filters:
            self.conv_prev_1x1 = ReLUConvBN(c_prev, filters, 1, 1, norm)
            self.state_1_adapter, state_1_channels = "conv_prev_1x1", filters
        else:
            state_1_channels = filters

        mults = block_multipliers(spec)
        channels = [filters, state_1_channels] + [m * filters for m in mults]
        stride = 2 if reduction else 1
        for b, block in enumerate(spec.blocks):
            for side, idx, op in (("left", block.input_1, block.op_1), ("right", block.input_2, block.op_2)):
                op_stride = stride if idx < NUM_INPUTS else 1
                self.add_module(f"comb_iter_{b}_{side}",
                                build_op(op, channels[idx], filters, op_stride, norm, pad_mode))

        # Input states in the output are brought to the last block's size and channel count.
        last_channels = channels[-1]
        self._reduced_outputs: set[int] = set()
        for idx in spec.concat:
            if idx < NUM_INPUTS and (reduction or channels[idx] != last_channels):
                self.add_module(f"output_reduce_{idx}",
                                FactorizedReduce(channels[idx], last_channels, stride, norm, relu=False))
                self._reduced_outputs.add(idx)
        self.out_channels = output_multiplier(spec) * filters

    def forward(self, h: torch.Tensor, h_prev: torch.Tensor | None) -> torch.Tensor:
        state_1 = h if h_prev is None else h_prev
        if self.state_1_adapter is not None:
            state_1 = getattr(self, self.state_1_adapter)(state_1)
        states = [self.conv_1x1(h), state_1]
        for b, block in enumerate(self.spec.blocks):
            left = self._run_op(f"comb_iter_{b}_left", block.op_1, states[block.input_1])
            right = self._run_op(f"comb_iter_{b}_right", block.op_2, states[block.input_2])
            states.append(left + right if block.combine == "add" else torch.cat([left, right], 1))
        outputs = []
        for idx in self.spec.concat:
            s = states[idx]
            if idx in self._reduced_outputs:
                s = getattr(self, f"output_reduce_{idx}")(s)
            outputs.append(s)
        return torch.cat(outputs, 1)

    def _run_op(self, module_name: str, op: str, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, module_name)(x)
        # slim applies drop path to every op output except identity.
        return y if op == "identity" else drop_path(y, self.drop_prob, self.training)
