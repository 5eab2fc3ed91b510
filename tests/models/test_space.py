"""The search space as data (validation messages, JSON round trip) and as the searches' decisions (encoding,
sampling, mutation)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.genotypes import random_genotype

from nasnet_det.genotypes import NASNET_A, NASNET_A_LITERAL, PUBLISHED, found_genotype, get_genotype
from nasnet_det.search_space import SearchSpace, cell_from_decisions, cell_to_decisions
from nasnet_det.space import OPS, Block, CellSpec, Genotype, GenotypeError, unused_states


def test_thirteen_ops_in_paper_order():
    assert len(OPS) == 13
    assert OPS[0] == "identity" and OPS[-1] == "sep_conv_7x7"


SLIM_NAMES = {"sep5": "sep_conv_5x5", "sep3": "sep_conv_3x3", "sep7": "sep_conv_7x7", "avg3": "avg_pool_3x3",
              "max3": "max_pool_3x3", "none": "identity"}


def _slim_cell(ops: str, indices: list[int]) -> list[tuple[int, int, str, str]]:
    names = [SLIM_NAMES[o] for o in ops.split()]
    return [(indices[2 * b], indices[2 * b + 1], names[2 * b], names[2 * b + 1]) for b in range(5)]


def test_nasnet_a_matches_slim_release():
    # slim NasNetANormalCell / NasNetAReductionCell: operations, hiddenstate_indices, used_hiddenstates.
    normal = _slim_cell("sep5 sep3 sep5 sep3 avg3 none avg3 avg3 sep3 none", [0, 1, 1, 1, 0, 1, 1, 1, 0, 0])
    reduce = _slim_cell("sep5 sep7 max3 sep7 avg3 sep5 none avg3 sep3 max3", [0, 1, 0, 1, 0, 1, 3, 2, 2, 0])
    assert [(*b.inputs(), *b.ops()) for b in NASNET_A.normal.blocks] == normal
    assert [(*b.inputs(), *b.ops()) for b in NASNET_A.reduce.blocks] == reduce
    # used_hiddenstates [1,0,0,0,0,0,0] / [1,1,1,0,0,0,0]: the unused states are concatenated.
    assert NASNET_A.normal.concat == (1, 2, 3, 4, 5, 6)
    assert NASNET_A.reduce.concat == (3, 4, 5, 6)
    assert all(b.combine == "add" for b in NASNET_A.normal.blocks + NASNET_A.reduce.blocks)


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
    space = SearchSpace(5)
    assert space.genotype(space.decisions(NASNET_A_LITERAL), "nasnet_a_literal") == NASNET_A_LITERAL
    with pytest.raises(ValueError, match="expected 50 decisions for B=5, got 25"):
        space.genotype(decisions)


def test_found_cells_are_validated_and_named_by_strategy_and_id():
    found = found_genotype(NASNET_A.to_dict(), "ppo", 7)
    assert found.name == "search_ppo_7" and (found.normal, found.reduce) == (NASNET_A.normal, NASNET_A.reduce)
    broken = NASNET_A.to_dict()
    broken["reduce"]["blocks"][0][2] = "conv_9x9"
    with pytest.raises(GenotypeError, match="op_1='conv_9x9' is not a known operation"):
        found_genotype(broken, "ppo", 7)


def test_uniform_draws_are_the_journaled_ones():
    """The draws of a seeded generator are those of the searches before the space was an object (journals
    of earlier runs resume with the same cells), and they cover every option of every decision."""
    space = SearchSpace(2)
    assert space.sample(2, torch.Generator().manual_seed(0)).tolist() == [
        [0, 1, 12, 3, 1, 2, 0, 10, 5, 0, 0, 1, 9, 2, 1, 1, 2, 12, 3, 1],
        [1, 0, 4, 12, 1, 2, 0, 0, 1, 1, 1, 0, 9, 2, 0, 0, 0, 8, 7, 0]]
    many = SearchSpace(5).sample(400, torch.Generator().manual_seed(0))
    for j, size in enumerate(SearchSpace(5).sizes):
        assert set(many[:, j].tolist()) == set(range(size))


def test_mutants_change_one_to_three_decisions_to_valid_options():
    space = SearchSpace(2)
    parent = [1, 1, 3, 1, 1, 1, 2, 2, 12, 0, 0, 1, 9, 11, 1, 0, 0, 2, 3, 0]
    # the predictor strategy's mutants of the journaled searches (same generator, same children)
    assert space.mutate(parent, 3, torch.Generator().manual_seed(2)) == [
        [1, 1, 3, 1, 1, 1, 2, 7, 12, 0, 0, 1, 9, 11, 1, 0, 0, 2, 3, 0],
        [1, 1, 3, 1, 1, 1, 2, 2, 12, 0, 0, 1, 9, 9, 1, 0, 0, 2, 3, 0],
        [1, 1, 3, 1, 1, 1, 2, 9, 12, 0, 0, 1, 9, 11, 0, 0, 0, 2, 3, 0]]
    for child in space.mutate(parent, 50, torch.Generator().manual_seed(3)):
        changed = sum(a != b for a, b in zip(child, parent))
        assert 1 <= changed <= 3  # every decision has at least 2 options: a re-drawn one changes
        space.genotype(child)  # valid


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


@pytest.mark.parametrize("concat, message", [
    ([2.7, 3], "concat entry 2.7 is not a state index"),
    (["s2"], "concat entry 's2' is not a state index"),
    (3, "'concat' must be a list of state indices, got 3"),
    ([], "the output concatenates no state"),
])
def test_concat_lists_are_validated_not_coerced(concat, message, tmp_path):
    data = NASNET_A.to_dict()
    data["normal"]["concat"] = concat
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=f"g.json: normal cell: {message}"):
        get_genotype(str(path))


def test_missing_concat_means_the_papers_rule():
    data = NASNET_A.to_dict()
    del data["reduce"]["concat"]
    assert Genotype.from_dict(data).reduce.concat == (4, 5, 6)


def test_block_mappings_and_decisions_are_checked():
    with pytest.raises(GenotypeError, match=r"unknown key\(s\) \['combin'\]"):
        Block.from_any({"input_1": 0, "input_2": 1, "op_1": "identity", "op_2": "identity", "combin": "concat"})
    decisions = cell_to_decisions(NASNET_A.normal)
    decisions[2] = 10.0
    with pytest.raises(GenotypeError, match="decisions must be integers"):
        cell_from_decisions(decisions)
    decisions[2] = 13
    with pytest.raises(GenotypeError, match="op_1 choice 13 is out of range 0..12"):
        cell_from_decisions(decisions)


def test_paper_only_cells_explain_what_is_missing(tmp_path):
    with pytest.raises(GenotypeError, match="is a directory"):
        get_genotype(str(tmp_path))
    with pytest.raises(GenotypeError, match="Figure 8"):
        get_genotype("nasnet_b")
    with pytest.raises(GenotypeError, match="unknown genotype 'nasnet_z'"):
        get_genotype("nasnet_z")
    assert set(PUBLISHED) == {"nasnet_a", "nasnet_a_literal"}
