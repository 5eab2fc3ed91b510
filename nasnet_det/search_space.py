"""The NASNet search space as the searches see it: a genotype as 2 x 5B integer decisions.

For each block of the normal cell, then of the reduction cell, five decisions (input_1, input_2, op_1, op_2,
combine): an input is a state index (block ``b`` may read states ``0 .. 1 + b``), an op an index into
:data:`~nasnet_det.space.OPS`, a combine an index into :data:`~nasnet_det.space.COMBINES`. Every integer
row in range is a valid genotype, so the strategies (the controller's policy, random search, zero-cost,
predictor, the supernet's path sampling) work on decisions and convert with :meth:`SearchSpace.genotype`.
The output (concat) list is not a decision: the paper's unused-states rule gives it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from nasnet_det.space import COMBINES, DEFAULT_NUM_BLOCKS, NUM_INPUTS, OPS, Block, CellSpec, Genotype, GenotypeError

DECISIONS_PER_BLOCK = 5  # input_1, input_2, op_1, op_2, combine


def decisions_per_cell(num_blocks: int = DEFAULT_NUM_BLOCKS) -> int:
    """The controller makes 5 decisions per block (2 inputs, 2 ops, 1 combine)."""
    return DECISIONS_PER_BLOCK * num_blocks


def cell_from_decisions(decisions: Iterable[int], num_blocks: int = DEFAULT_NUM_BLOCKS,
                        concat: Sequence[int] | None = None) -> CellSpec:
    """Build a cell from the controller's integer choices, 5 per block:
    (input_1, input_2, op_1 index into OPS, op_2 index, combine index into COMBINES)."""
    d = list(decisions)
    if len(d) != decisions_per_cell(num_blocks):
        raise GenotypeError(f"expected {decisions_per_cell(num_blocks)} decisions for {num_blocks} blocks, "
                            f"got {len(d)}")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in d):
        raise GenotypeError(f"decisions must be integers, got {d}")
    blocks = []
    for b in range(num_blocks):
        i1, i2, o1, o2, c = d[5 * b: 5 * b + 5]
        for name, value, hi in (("op_1", o1, len(OPS)), ("op_2", o2, len(OPS)), ("combine", c, len(COMBINES))):
            if not 0 <= value < hi:
                raise GenotypeError(f"block {b}: {name} choice {value} is out of range 0..{hi - 1}")
        blocks.append(Block(int(i1), int(i2), OPS[int(o1)], OPS[int(o2)], COMBINES[int(c)]))
    return CellSpec(tuple(blocks), None if concat is None else tuple(concat)).validate()


def cell_to_decisions(cell: CellSpec) -> list[int]:
    """Inverse of :func:`cell_from_decisions` (the concat list is not a decision)."""
    out: list[int] = []
    for b in cell.blocks:
        out += [b.input_1, b.input_2, OPS.index(b.op_1), OPS.index(b.op_2), COMBINES.index(b.combine)]
    return out


@dataclass(frozen=True)
class DecisionSlot:
    cell: int        # 0 normal, 1 reduction
    block: int
    kind: str        # "input", "op" or "combine"
    num_valid: int   # options allowed at this step


class SearchSpace:
    """The 2 x 5B decisions of cells of ``num_blocks`` blocks: their slots, the genotype <-> decisions mapping,
    uniform sampling and mutation."""

    def __init__(self, num_blocks: int = DEFAULT_NUM_BLOCKS):
        self.num_blocks = num_blocks
        slots = []
        for cell in range(2):
            for b in range(num_blocks):
                n_in = NUM_INPUTS + b
                slots += [DecisionSlot(cell, b, "input", n_in), DecisionSlot(cell, b, "input", n_in),
                          DecisionSlot(cell, b, "op", len(OPS)), DecisionSlot(cell, b, "op", len(OPS)),
                          DecisionSlot(cell, b, "combine", len(COMBINES))]
        self.slots: tuple[DecisionSlot, ...] = tuple(slots)

    @property
    def num_decisions(self) -> int:
        return len(self.slots)

    @property
    def sizes(self) -> list[int]:
        """The number of valid options of every decision."""
        return [s.num_valid for s in self.slots]

    @property
    def op_columns(self) -> list[int]:
        """The positions of the op decisions (two per block, normal cell first)."""
        return [j for j, s in enumerate(self.slots) if s.kind == "op"]

    def genotype(self, decisions: Sequence[int], name: str = "") -> Genotype:
        """Map one sample's 2 x 5B integers to a genotype (concat = the paper's unused-states rule)."""
        n = decisions_per_cell(self.num_blocks)
        if len(decisions) != 2 * n:
            raise ValueError(f"expected {2 * n} decisions for B={self.num_blocks}, got {len(decisions)}")
        return Genotype(cell_from_decisions(decisions[:n], self.num_blocks),
                        cell_from_decisions(decisions[n:], self.num_blocks), name).validate(self.num_blocks)

    def decisions(self, genotype: Genotype) -> list[int]:
        """Inverse of :meth:`genotype` (the concat lists are not decisions)."""
        return cell_to_decisions(genotype.normal) + cell_to_decisions(genotype.reduce)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` uniform draws ([n, 2 x 5B] decisions): every valid option of every decision equally likely."""
        cols = [torch.randint(0, s.num_valid, (n,), generator=generator) for s in self.slots]
        return torch.stack(cols, 1)

    def mutate(self, parent: Sequence[int], count: int, generator: torch.Generator) -> list[list[int]]:
        """``count`` copies of ``parent`` with 1 to 3 decisions (uniformly many, uniformly which) re-drawn to
        another valid option."""
        sizes = self.sizes
        out = []
        for _ in range(count):
            child = list(parent)
            changes = int(torch.randint(1, 4, (1,), generator=generator))
            for slot in torch.randperm(len(parent), generator=generator)[:changes].tolist():
                n = sizes[slot]
                if n > 1:
                    child[slot] = (parent[slot] + int(torch.randint(1, n, (1,), generator=generator))) % n
            out.append(child)
        return out
