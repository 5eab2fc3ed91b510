"""The search space as data: validation messages, JSON round trip, decision encoding."""

from __future__ import annotations

import json

import pytest
from conftest import random_genotype

from nasnet_det.genotypes import NASNET_A, NASNET_A_LITERAL, PUBLISHED, get_genotype
from nasnet_det.space import (
    OPS,
    Block,
    CellSpec,
    Genotype,
    GenotypeError,
    cell_from_decisions,
    cell_to_decisions,
    unused_states,
)


def test_thirteen_ops_in_paper_order():
    assert len(OPS) == 13
    assert OPS[0] == "identity" and OPS[-1] == "sep_conv_7x7"


def test_nasnet_a_matches_slim_release():
    # slim NasNetANormalCell: hiddenstate_indices [0,1, 1,1, 0,1, 1,1, 0,0], 6F output incl. h_{i-1}
    normal = NASNET_A.normal
    assert [b.inputs() for b in normal.blocks] == [(0, 1), (1, 1), (0, 1), (1, 1), (0, 0)]
    assert [b.ops() for b in normal.blocks][2] == ("avg_pool_3x3", "identity")
    assert normal.concat == (1, 2, 3, 4, 5, 6)
    reduce = NASNET_A.reduce
    assert [b.inputs() for b in reduce.blocks] == [(0, 1), (0, 1), (0, 1), (3, 2), (2, 0)]
    assert reduce.concat == (3, 4, 5, 6)
    assert all(b.combine == "add" for b in normal.blocks + reduce.blocks)


def test_literal_rule_differs_from_release():
    assert NASNET_A_LITERAL.normal.concat == (2, 3, 4, 5, 6)
    assert NASNET_A_LITERAL.reduce.concat == (4, 5, 6)
    assert unused_states(NASNET_A.reduce.blocks) == (4, 5, 6)


@pytest.mark.parametrize("genotype", [NASNET_A, NASNET_A_LITERAL, random_genotype(3, 2), random_genotype(4, 7)])
def test_json_round_trip(genotype, tmp_path):
    assert Genotype.from_json(genotype.to_json()) == genotype
    path = genotype.save(tmp_path / "g.json")
    assert Genotype.load(path) == genotype
    assert get_genotype(str(path)) == genotype


def test_decisions_round_trip():
    decisions = cell_to_decisions(NASNET_A.reduce)
    assert len(decisions) == 25
    assert cell_from_decisions(decisions, concat=NASNET_A.reduce.concat) == NASNET_A.reduce


@pytest.mark.parametrize("blocks, message", [
    ([Block(0, 1, "conv_9x9", "identity")], "op_1='conv_9x9' is not a known operation"),
    ([Block(0, 2, "identity", "identity")], "input_2=2 is out of range; block 0 can read states 0..1"),
    ([Block(0, 1, "identity", "identity", "mul")], "combine='mul'"),
    ([Block(0, 1, "identity", "identity"), Block(4, 1, "identity", "identity")], "block 1: input_1=4"),
])
def test_bad_cells_name_the_problem(blocks, message):
    with pytest.raises(GenotypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CellSpec(tuple(blocks)).validate()


def test_wrong_block_count_and_bad_concat():
    with pytest.raises(GenotypeError, match="normal cell: expected 5 blocks, got 2"):
        random_genotype(0, num_blocks=2).validate(num_blocks=5)
    with pytest.raises(GenotypeError, match="concat state 9 is out of range"):
        CellSpec((Block(0, 1, "identity", "identity"),), (9,)).validate()


def test_bad_json_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="nope.json does not exist"):
        Genotype.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(GenotypeError, match="broken.json: not valid JSON"):
        get_genotype(str(broken))
    no_reduce = tmp_path / "half.json"
    no_reduce.write_text(json.dumps({"normal": NASNET_A.normal.to_dict()}))
    with pytest.raises(GenotypeError, match="half.json: missing key 'reduce'"):
        get_genotype(str(no_reduce))
    bad_op = NASNET_A.to_dict()
    bad_op["reduce"]["blocks"][1][2] = "sep_conv_9x9"
    bad = tmp_path / "bad_op.json"
    bad.write_text(json.dumps(bad_op))
    with pytest.raises(GenotypeError, match="bad_op.json: reduction cell, block 1: op_1='sep_conv_9x9'"):
        get_genotype(str(bad))


def test_paper_only_cells_explain_what_is_missing():
    with pytest.raises(GenotypeError, match="Figure 8"):
        get_genotype("nasnet_b")
    with pytest.raises(GenotypeError, match="unknown genotype 'nasnet_z'"):
        get_genotype("nasnet_z")
    assert set(PUBLISHED) == {"nasnet_a", "nasnet_a_literal"}
