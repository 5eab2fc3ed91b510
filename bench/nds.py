"""NDS sweeps as a ground truth (issue 30): networks from "On Network Design Spaces for Visual Recognition"
(Radosavovic et al., ICCV 2019), each a cell sampled from a NASNet-like design space and trained on ImageNet
for 50 epochs. A sweep is a JSON list of entries (the NDS data release's format); this module reads any such
file and translates each genotype into this project's :class:`~nasnet_det.space.Genotype`:

* ``net.genotype.normal`` / ``reduce`` are flat lists of ``[op, input]`` pairs; pairs 2j and 2j+1 are the two
  inputs of node j (summed). NDS's input 0 is cell k-2 and input 1 cell k-1; this project's state 0 is the
  previous cell (h_i) and state 1 the one before (h_{i-1}): 0 and 1 are swapped, inputs m >= 2 (node m-2) are
  this project's state m unchanged. ``*_concat`` lists the states concatenated as the cell's output (the same
  swap applies).
* op names: ``skip_connect`` -> ``identity``, ``conv_7x1_1x7`` -> ``conv_1x7_7x1``, ``conv_3x1_1x3`` ->
  ``conv_1x3_3x1``; the others keep their names. pycls' ``dil_conv_3x3`` is a dilated *separable* conv where
  this project's is dense: the translated cell is the same cell up to that op's inner form.

The truth is the final top-1 accuracy, ``100 - test_ep_top1[-1]`` (in %), the figure NASWOT and NNI use. The
NDS network's parameter count, width (the first cell's channels) and depth (cells in all) are kept: size alone
ranks these networks well, so every estimator is also judged against the accuracy left after size.

The NDS files are for measurement: the package and its tests never read them (a test writes its own small
NDS-format file)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasnet_det.space import Block, CellSpec, Genotype, GenotypeError
from nasnet_det.utils.errors import BadInputError

#: NDS (DARTS / pycls) op names that differ from this project's ``nasnet_det.space.OPS``
NDS_OP_NAMES = {"skip_connect": "identity", "conv_7x1_1x7": "conv_1x7_7x1", "conv_3x1_1x3": "conv_1x3_3x1"}


@dataclass(frozen=True)
class NDSCell:
    """One NDS network: its translated genotype, final top-1 accuracy (%) and the NDS network's size."""

    index: int           # position in the file
    genotype: Genotype
    accuracy: float      # 100 - test_ep_top1[-1]
    params: int          # the NDS ImageNet network's parameter count
    width: int           # channels of its first cell
    depth: int           # its cells in all (two of them reduction cells)


def _swap(i: int) -> int:
    """NDS's input index -> this project's state index (0 and 1 swapped)."""
    return {0: 1, 1: 0}.get(i, i)


def translate_cell(pairs: Any, concat: Any, where: str) -> CellSpec:
    """One NDS cell (``[[op, input], ...]`` and its concat list) as this project's cell; GenotypeError (one line
    naming ``where``) for anything that is not a valid NASNet cell."""
    if not isinstance(pairs, Sequence) or isinstance(pairs, str) or not pairs or len(pairs) % 2:
        raise GenotypeError(f"{where}: expected a non-empty list of [op, input] pairs, two per node, got {pairs!r}")
    ops, inputs = [], []
    for j, pair in enumerate(pairs):
        if (not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2 or not isinstance(pair[0], str)
                or not isinstance(pair[1], int) or isinstance(pair[1], bool)):
            raise GenotypeError(f"{where}: pair {j} is {pair!r}; expected [op name, input index]")
        ops.append(NDS_OP_NAMES.get(pair[0], pair[0]))
        inputs.append(_swap(pair[1]))
    if not isinstance(concat, Sequence) or isinstance(concat, str) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in concat):
        raise GenotypeError(f"{where}: concat {concat!r} is not a list of state indices")
    blocks = tuple(Block(inputs[2 * j], inputs[2 * j + 1], ops[2 * j], ops[2 * j + 1], "add")
                   for j in range(len(pairs) // 2))
    return CellSpec(blocks, tuple(_swap(c) for c in concat)).validate(where)


def translate_entry(entry: Any, index: int, where: str) -> NDSCell:
    """One entry of an NDS file (``where`` names the file) as an :class:`NDSCell`; BadInputError, one line naming
    the file, the entry index and why, for an entry that is not a valid NASNet network of the NDS format."""
    loc = f"{where}: entry {index}"
    try:
        net, geno = entry["net"], entry["net"]["genotype"]
        errors = entry["test_ep_top1"]
        width, depth, params = int(net["width"]), int(net["depth"]), int(entry["params"])
        final = float(errors[-1])
        cells = {kind: translate_cell(geno[kind], geno[f"{kind}_concat"], f"{loc}: {label} cell")
                 for kind, label in (("normal", "normal"), ("reduce", "reduction"))}
    except GenotypeError as e:
        raise BadInputError(f"{e} (not a valid NASNet cell)") from None
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise BadInputError(f"{loc}: {type(e).__name__} {e}; expected the NDS format (net.genotype.normal/reduce "
                            "with *_concat, net.width, net.depth, params, test_ep_top1 as a list of errors in %)") \
            from None
    if not 0 <= final <= 100 or not math.isfinite(final):
        raise BadInputError(f"{loc}: test_ep_top1[-1] = {final}; expected a top-1 error in % (0..100)")
    if cells["normal"].num_blocks != cells["reduce"].num_blocks:
        raise BadInputError(f"{loc}: the normal cell has {cells['normal'].num_blocks} nodes and the reduction cell "
                            f"{cells['reduce'].num_blocks}; a NASNet genotype has the same number in both")
    if width < 1 or depth < 3 or params < 1:
        raise BadInputError(f"{loc}: width {width}, depth {depth}, params {params}; expected positive sizes and "
                            "a depth of at least 3 cells")
    genotype = Genotype(cells["normal"], cells["reduce"], name=f"{Path(where).stem}_{index}")
    return NDSCell(index, genotype, 100.0 - final, params, width, depth)


def load_nds(path: str | Path) -> list[NDSCell]:
    """Every network of the NDS-format JSON file ``path``, translated (BadInputError on the first bad entry)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"--truth nds:{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"--truth nds:{path}: not JSON ({e})") from None
    if not isinstance(data, list) or len(data) < 3:
        raise BadInputError(f"--truth nds:{path}: expected a JSON list of at least 3 NDS entries")
    return [translate_entry(e, i, str(path)) for i, e in enumerate(data)]


def parse_truth(text: str) -> Path:
    """``--truth nds:PATH`` -> PATH."""
    kind, _, path = text.partition(":")
    if kind != "nds" or not path:
        raise BadInputError(f"--truth {text!r}: expected nds:PATH (an NDS-format JSON file)")
    return Path(path)


def sample_cells(cells: Sequence[NDSCell], n: int, seed: int = 0) -> list[NDSCell]:
    """A fixed seeded sample of ``n`` cells (all of them when ``n`` <= 0 or >= their number), in file order."""
    if n <= 0 or n >= len(cells):
        return list(cells)
    idx = np.sort(np.random.default_rng([seed, 30]).choice(len(cells), n, replace=False))
    return [cells[i] for i in idx]


def nds_network(cell: NDSCell, base: Mapping[str, Any]) -> dict[str, Any]:
    """The NDS network's size in this project's CIFAR network (a ``MODEL.NASNET`` node from ``base``): pycls'
    ``depth`` counts every cell, two of them reduction cells, so ``NUM_CELLS`` (normal cells per stage) =
    round((depth - 2) / 3), at least 1; ``width`` is the first cell's per-op channels, as ``FILTERS`` is here."""
    net = dict(base)
    net.update(NUM_CELLS=max(1, round((cell.depth - 2) / 3)), FILTERS=cell.width)
    return net


def size_residual(accuracy: Sequence[float], params: Sequence[float]) -> np.ndarray:
    """The accuracy left after size: residuals of the least-squares line of ``accuracy`` on log(``params``)."""
    y, x = np.asarray(accuracy, float), np.log(np.asarray(params, float))
    slope, intercept = np.polyfit(x, y, 1)
    return y - (slope * x + intercept)
