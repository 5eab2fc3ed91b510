"""The NASNet search space as plain data: operations, blocks, cells and genotypes.

Index convention (TF-slim's, the one the released NASNet-A checkpoints use):

* state 0 = ``h_i``, the output of the previous cell,
* state 1 = ``h_{i-1}``, the output of the cell before that,
* state ``2 + b`` = the output of block ``b`` of this cell.

Block ``b`` may read any state ``< 2 + b``. A cell's output is the channel concatenation of the states
listed in ``CellSpec.concat``. The paper's rule ("all unused hidden states are concatenated") is
:func:`unused_states`; the released NASNet-A cells use an explicit list that differs from it, which is why
a cell stores its concat list.

The searches' integer encoding of these cells (decisions, sampling, mutation) is
:mod:`nasnet_det.search_space`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasnet_det.utils.io import atomic_write
from nasnet_det.utils.jsonfile import load_json_text, read_json_file

# The 13 operations of the paper (section 3), in the paper's order.
OPS: tuple[str, ...] = (
    "identity",
    "conv_1x3_3x1",
    "conv_1x7_7x1",
    "dil_conv_3x3",
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
)
COMBINES: tuple[str, ...] = ("add", "concat")
NUM_INPUTS = 2  # h_i and h_{i-1}
DEFAULT_NUM_BLOCKS = 5


class GenotypeError(ValueError):
    """A cell or genotype that does not describe a valid NASNet cell."""


# what a genotype file holds, for the messages about one that cannot be read
GENOTYPE_JSON = ("a genotype JSON object {\"name\": ..., \"normal\": {\"blocks\": [[input_1, input_2, op_1, op_2, "
                 "combine], ...]}, \"reduce\": {...}}")


@dataclass(frozen=True)
class Block:
    """One block: two states, one op on each, and how the two results are combined."""

    input_1: int
    input_2: int
    op_1: str
    op_2: str
    combine: str = "add"

    def inputs(self) -> tuple[int, int]:
        return (self.input_1, self.input_2)

    def ops(self) -> tuple[str, str]:
        return (self.op_1, self.op_2)

    def to_list(self) -> list[Any]:
        return [self.input_1, self.input_2, self.op_1, self.op_2, self.combine]

    @classmethod
    def from_any(cls, value: Any, where: str = "block") -> Block:
        if isinstance(value, Block):
            return value
        if isinstance(value, Mapping):
            keys = ("input_1", "input_2", "op_1", "op_2", "combine")
            unknown = sorted(set(value) - set(keys))
            if unknown:
                raise GenotypeError(f"{where}: unknown key(s) {unknown}; a block has {', '.join(keys)}")
            try:
                return cls(**{k: value[k] for k in keys[:4]}, combine=value.get("combine", "add"))
            except KeyError as e:
                raise GenotypeError(f"{where}: missing key {e.args[0]!r}; a block needs "
                                    "input_1, input_2, op_1, op_2 and optionally combine") from None
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (4, 5):
            return cls(*value)
        raise GenotypeError(f"{where}: expected [input_1, input_2, op_1, op_2, combine] or a mapping "
                            f"with those keys, got {value!r}")


def unused_states(blocks: Sequence[Block]) -> tuple[int, ...]:
    """The paper's literal output rule: block outputs that no later block reads."""
    # only integer inputs can name a state; any other value is reported by CellSpec.validate (not a TypeError here)
    used = {i for b in blocks for i in b.inputs() if isinstance(i, int)}
    return tuple(NUM_INPUTS + j for j in range(len(blocks)) if NUM_INPUTS + j not in used)


@dataclass(frozen=True)
class CellSpec:
    """A cell: B blocks and the list of states concatenated as its output.

    ``concat=None`` (the default) applies the paper's rule, :func:`unused_states`; an explicit list is kept
    as given and checked by :meth:`validate`.
    """

    blocks: tuple[Block, ...]
    concat: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(Block.from_any(b, f"block {i}")
                                                 for i, b in enumerate(self.blocks)))
        if self.concat is None:
            object.__setattr__(self, "concat", unused_states(self.blocks))
        elif isinstance(self.concat, Sequence) and not isinstance(self.concat, str):
            object.__setattr__(self, "concat", tuple(self.concat))
        else:
            raise GenotypeError(f"concat must be a list of state indices, got {self.concat!r}")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_states(self) -> int:
        return NUM_INPUTS + len(self.blocks)

    def validate(self, where: str = "cell", num_blocks: int | None = None) -> CellSpec:
        if num_blocks is not None and len(self.blocks) != num_blocks:
            raise GenotypeError(f"{where}: expected {num_blocks} blocks, got {len(self.blocks)}")
        if not self.blocks:
            raise GenotypeError(f"{where}: a cell needs at least one block")
        for b, block in enumerate(self.blocks):
            loc = f"{where}, block {b}"
            for slot, idx in (("input_1", block.input_1), ("input_2", block.input_2)):
                if not isinstance(idx, int) or isinstance(idx, bool):
                    raise GenotypeError(f"{loc}: {slot}={idx!r} is not a state index; expected an integer "
                                        f"0..{NUM_INPUTS + b - 1} (0=h_i, 1=h_i-1, 2.. = earlier blocks)")
                if not 0 <= idx < NUM_INPUTS + b:
                    raise GenotypeError(
                        f"{loc}: {slot}={idx!r} is out of range; block {b} can read states "
                        f"0..{NUM_INPUTS + b - 1} (0=h_i, 1=h_i-1, 2.. = earlier blocks)")
            for slot, op in (("op_1", block.op_1), ("op_2", block.op_2)):
                if not isinstance(op, str) or op not in OPS:
                    raise GenotypeError(f"{loc}: {slot}={op!r} is not a known operation; "
                                        f"choose one of {', '.join(OPS)}")
            if not isinstance(block.combine, str) or block.combine not in COMBINES:
                raise GenotypeError(f"{loc}: combine={block.combine!r}; expected one of {COMBINES}")
        if not self.concat:
            raise GenotypeError(f"{where}: the output concatenates no state")
        for idx in self.concat:
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise GenotypeError(f"{where}: concat entry {idx!r} is not a state index (an integer)")
            if not 0 <= idx < self.num_states:
                raise GenotypeError(f"{where}: concat state {idx} is out of range 0..{self.num_states - 1}")
        if len(set(self.concat)) != len(self.concat):
            raise GenotypeError(f"{where}: concat list {list(self.concat)} repeats a state")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": [b.to_list() for b in self.blocks], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "cell") -> CellSpec:
        if not isinstance(data, Mapping) or "blocks" not in data:
            raise GenotypeError(f"{where}: expected a mapping with a 'blocks' list")
        blocks = data["blocks"]
        if not isinstance(blocks, Sequence) or isinstance(blocks, str):
            raise GenotypeError(f"{where}: 'blocks' must be a list")
        concat = data.get("concat")
        if concat is not None and (not isinstance(concat, Sequence) or isinstance(concat, str)):
            raise GenotypeError(f"{where}: 'concat' must be a list of state indices, got {concat!r}")
        spec = cls(tuple(Block.from_any(b, f"{where}, block {i}") for i, b in enumerate(blocks)),
                   None if concat is None else tuple(concat))
        return spec.validate(where)


@dataclass(frozen=True)
class Genotype:
    """A searched architecture: one normal cell and one reduction cell."""

    normal: CellSpec
    reduce: CellSpec
    name: str = ""

    def validate(self, num_blocks: int | None = None) -> Genotype:
        self.normal.validate("normal cell", num_blocks)
        self.reduce.validate("reduction cell", num_blocks)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "normal": self.normal.to_dict(), "reduce": self.reduce.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "genotype") -> Genotype:
        if not isinstance(data, Mapping):
            raise GenotypeError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key in ("normal", "reduce"):
            if key not in data:
                raise GenotypeError(f"{where}: missing key {key!r} (a genotype has 'normal' and 'reduce' cells)")
        return cls(CellSpec.from_dict(data["normal"], f"{where}: normal cell"),
                   CellSpec.from_dict(data["reduce"], f"{where}: reduction cell"),
                   str(data.get("name", "")))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, where: str = "genotype") -> Genotype:
        data = load_json_text(text, where, GENOTYPE_JSON, GenotypeError)
        return cls.from_dict(data, where)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.to_json() + "\n")  # read back by later runs and pipeline stages
        return path

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if not path.is_file():
            raise GenotypeError(f"genotype file {path} does not exist")
        return cls.from_dict(read_json_file(path, GENOTYPE_JSON, GenotypeError), where=str(path))
