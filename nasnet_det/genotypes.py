"""Published NASNet cells as :class:`~nasnet_det.space.Genotype` values.

NASNet-A is transcribed from TF-slim's ``NasNetANormalCell`` / ``NasNetAReductionCell`` (the cells of the
released ImageNet checkpoints), in slim's index convention (0 = h_i, 1 = h_{i-1}) and with slim's
explicit concat lists (normal: h_{i-1} and the five block outputs, 6F channels; reduction: states 3..6,
4F channels), not the paper's literal "unused states" rule.

NASNet-B and NASNet-C are known only from the paper's text and Figures 8/9. The text fixes some facts
(kept in :data:`PAPER_ONLY`), but their per-block inputs and ops exist only in the figures and NASNet-B
uses a different cell interface (4 input states, all states fed forward, add+LayerNorm/InstanceNorm
combines) that this search space does not express. They are therefore not buildable here; asking for one
raises an error that says so.

A cell a search found is named by :func:`found_cell_name` (``search_{strategy}_{id}``) wherever it is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasnet_det.space import Block, CellSpec, Genotype, GenotypeError

NASNET_A = Genotype(
    name="nasnet_a",
    normal=CellSpec(
        blocks=(
            Block(0, 1, "sep_conv_5x5", "sep_conv_3x3"),
            Block(1, 1, "sep_conv_5x5", "sep_conv_3x3"),
            Block(0, 1, "avg_pool_3x3", "identity"),
            Block(1, 1, "avg_pool_3x3", "avg_pool_3x3"),
            Block(0, 0, "sep_conv_3x3", "identity"),
        ),
        concat=(1, 2, 3, 4, 5, 6),
    ),
    reduce=CellSpec(
        blocks=(
            Block(0, 1, "sep_conv_5x5", "sep_conv_7x7"),
            Block(0, 1, "max_pool_3x3", "sep_conv_7x7"),
            Block(0, 1, "avg_pool_3x3", "sep_conv_5x5"),
            Block(3, 2, "identity", "avg_pool_3x3"),
            Block(2, 0, "sep_conv_3x3", "max_pool_3x3"),
        ),
        concat=(3, 4, 5, 6),
    ),
).validate()

# The same NASNet-A blocks with the paper's literal output rule (unused block outputs only), as DARTS
# transcribes it. Not weight-compatible with the released checkpoints; useful to compare the two rules.
NASNET_A_LITERAL = Genotype(
    name="nasnet_a_literal",
    normal=CellSpec(NASNET_A.normal.blocks),
    reduce=CellSpec(NASNET_A.reduce.blocks),
).validate()

PUBLISHED: dict[str, Genotype] = {g.name: g for g in (NASNET_A, NASNET_A_LITERAL)}

# What the paper's text fixes about cells whose structure is only drawn in figures.
PAPER_ONLY: dict[str, dict[str, object]] = {
    "nasnet_b": {
        "num_blocks": 4,
        "num_cell_inputs": 4,
        "output": "all hidden states created in the cell are fed to the next layer (no unused-state concat)",
        "combines": ["add", "concat", "add+layer_norm", "add+instance_norm"],
        "published_sizes": {"cifar10": "4 @ 1152, 2.6M params, 3.73% error",
                            "imagenet_mobile": "4 @ 1536, 5.3M params, 488M mult-adds, 72.8% top-1"},
        "missing": "per-block inputs and ops (paper Figure 8 only); a 4-input cell interface",
    },
    "nasnet_c": {
        "num_blocks": "not stated in the text",
        "output": "unused hidden states concatenated, as NASNet-A",
        "combines": ["add", "concat", "add+layer_norm", "add+instance_norm"],
        "published_sizes": {"cifar10": "4 @ 640, 3.1M params, 3.59% error",
                            "imagenet_mobile": "3 @ 960, 4.9M params, 558M mult-adds, 72.5% top-1"},
        "missing": "per-block inputs and ops (paper Figure 9 only); the normalising combine ops",
    },
}


def get_genotype(name_or_path: str | Path | Genotype) -> Genotype:
    """A published cell by name (``nasnet_a``) or a genotype JSON file by path."""
    if isinstance(name_or_path, Genotype):
        return name_or_path.validate()
    key = str(name_or_path)
    if key.lower() in PUBLISHED:
        return PUBLISHED[key.lower()]
    if key.lower() in PAPER_ONLY:
        info = PAPER_ONLY[key.lower()]
        raise GenotypeError(f"{key}: the paper gives this cell only as a figure, so no exact genotype exists; "
                            f"missing: {info['missing']}. Published cells available: {', '.join(PUBLISHED)}")
    path = Path(key)
    if path.is_dir():
        raise GenotypeError(f"genotype {key!r} is a directory; give a genotype .json file or a published name")
    if path.suffix == ".json" or path.exists():
        return Genotype.load(path)
    raise GenotypeError(f"unknown genotype {key!r}: not a published cell ({', '.join(PUBLISHED)}) "
                        "and not an existing .json file")


def found_cell_name(strategy: str, evaluation_id: int) -> str:
    """The name of a cell a search found: its strategy and its evaluation id in the search's journal."""
    return f"search_{strategy}_{evaluation_id}"


def found_genotype(genotype: Mapping[str, Any], strategy: str, evaluation_id: int) -> Genotype:
    """A found cell as the search records it (a journal row's, ``top_k.json``'s or ``pareto.json``'s genotype
    mapping), validated and named by :func:`found_cell_name`."""
    return replace(Genotype.from_dict(genotype), name=found_cell_name(strategy, evaluation_id))
