"""Shared test helpers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nasnet_det.space import COMBINES, NUM_INPUTS, OPS, Block, CellSpec, Genotype

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core CPU one thread per test process is faster than two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
