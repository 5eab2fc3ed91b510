"""Random genotypes for tests (any cell the search space allows)."""

from __future__ import annotations

import random

from nasnet_det.space import COMBINES, NUM_INPUTS, OPS, Block, CellSpec, Genotype


def random_cell(rng: random.Random, num_blocks: int, allow_concat: bool = True) -> CellSpec:
    blocks = []
    for b in range(num_blocks):
        blocks.append(Block(rng.randrange(NUM_INPUTS + b), rng.randrange(NUM_INPUTS + b), rng.choice(OPS),
                            rng.choice(OPS), rng.choice(COMBINES if allow_concat else ("add",))))
    return CellSpec(tuple(blocks))


def random_genotype(seed: int, num_blocks: int = 5, allow_concat: bool = True) -> Genotype:
    rng = random.Random(seed)
    return Genotype(random_cell(rng, num_blocks, allow_concat), random_cell(rng, num_blocks, allow_concat),
                    name=f"random_{seed}_b{num_blocks}").validate()
