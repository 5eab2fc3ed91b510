"""bench/search_quality.py: the statistics (rank correlations with bootstrap CIs, ranks, seed noise), the
size-matched random cells, the resumable ground-truth cache, and the protocol end to end at a tiny setting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from nasnet_det.genotypes import NASNET_A
from nasnet_det.utils.errors import BadInputError

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def sq(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import search_quality

    return search_quality


def test_rank_correlations_of_known_rankings(sq):
    truth = list(range(10))
    one_swap = [1, 0, *range(2, 10)]  # one discordant pair of 45
    r = sq.rank_correlations(one_swap, truth, n_resamples=500)
    assert r["kendall"] == pytest.approx(1 - 2 / 45)
    assert r["spearman"] == pytest.approx(1 - 6 * 2 / (10 * 99))
    for name in ("kendall", "spearman"):
        assert -1 <= r[f"{name}_lo"] <= r[name] <= r[f"{name}_hi"] <= 1
    rev = sq.rank_correlations(truth[::-1], truth, n_resamples=200)
    assert rev["kendall"] == pytest.approx(-1) and rev["spearman"] == pytest.approx(-1)
    rng = np.random.default_rng(0)
    noise = sq.rank_correlations(rng.permutation(30), np.arange(30), n_resamples=500)
    assert noise["kendall_lo"] < 0 < noise["kendall_hi"]  # an unrelated ranking: the CI spans 0
    # the batched statistics the bootstrap uses are scipy's, ties included
    a, b = rng.integers(0, 5, (7, 12)), rng.integers(0, 4, (7, 12))
    for fn, ref in ((sq._kendall_tau_b, lambda x, y: scipy.stats.kendalltau(x, y)[0]),
                    (sq._spearman_rho, lambda x, y: scipy.stats.spearmanr(x, y)[0])):
        assert fn(a, b) == pytest.approx([ref(x, y) for x, y in zip(a, b)])
    assert sq._kendall_tau_b(np.ones(5), np.arange(5)) == 0  # a constant side carries no ranking
    with pytest.raises(BadInputError, match=">= 3 paired"):
        sq.rank_correlations([1, 2], [1, 2])


def test_ranks_and_seed_noise(sq):
    assert sq.rank_among(0.5, [0.1, 0.6, 0.7]) == 3
    assert sq.rank_among(0.8, [0.1, 0.6, 0.7]) == 1
    assert sq.rank_among(0.6, [0.6, 0.6]) == 1  # ties in its favour
    # pooled over cells with >= 2 seeds: variances 1 (dof 2) and 4 (dof 1) -> (2 + 4) / 3
    noise = sq.pooled_seed_std({"a": [1.0, 2.0, 3.0], "b": [0.0, 2 * np.sqrt(2)], "c": [5.0]})
    assert noise == pytest.approx(np.sqrt(2))


def test_size_matching_accepts_within_and_refuses(sq):
    net = sq.Budget(5, 8, 1, 4).network()
    ref = sq.param_count(NASNET_A, net)
    assert sq.within_size(int(ref * 1.29), ref, 0.3) and not sq.within_size(int(ref * 1.31), ref, 0.3)
    assert sq.within_size(int(ref * 0.71), ref, 0.3) and not sq.within_size(int(ref * 0.69), ref, 0.3)
    cells = sq.size_matched_cells(4, net, 0.3, seed=1)
    assert len(cells) == 4 and len({sq.genotype_key(g) for g, _ in cells}) == 4
    assert all(abs(p - ref) <= 0.3 * ref and p == sq.param_count(g, net) for g, p in cells)
    again = sq.size_matched_cells(4, net, 0.3, seed=1)  # the same cells from the same seed
    assert [sq.genotype_key(g) for g, _ in cells] == [sq.genotype_key(g) for g, _ in again]
    with pytest.raises(BadInputError, match="--size-tolerance 0.0: only 0 of 4"):
        sq.size_matched_cells(4, net, 0.0, seed=1, max_draws=5)


def test_strategy_entries_with_overrides_of_their_own(sq):
    specs = sq.parse_strategies("random, zero_cost[SEARCH.ZERO_COST.PROXY=params;SEARCH.ZERO_COST.CANDIDATES=8],"
                                "zero_cost")
    assert specs == {"random": ("random", []), "zero_cost": ("zero_cost", []),
                     "zero_cost[SEARCH.ZERO_COST.PROXY=params;SEARCH.ZERO_COST.CANDIDATES=8]":
                         ("zero_cost", ["SEARCH.ZERO_COST.PROXY", "params", "SEARCH.ZERO_COST.CANDIDATES", "8"])}
    for bad in ("zero_cost[SEARCH.ZERO_COST.PROXY]", "zero_cost[=params]", "Zero-cost", "random[a=b"):
        with pytest.raises(BadInputError, match="--strategies entry"):
            sq.parse_strategies(bad)


def test_budget_parse(sq):
    b = sq.Budget.parse("400@16px:1@8")
    assert (b.steps, b.image_size, b.num_cells, b.filters) == (400, 16, 1, 8) and b.label == "400@16px:1@8"
    for bad in ("400@16:1", "x@16px:1@8", "0@16px:1@8"):
        with pytest.raises(BadInputError, match="--budget"):
            sq.Budget.parse(bad)


def test_ground_truth_cache_resumes_without_training(sq, tmp_path, monkeypatch):
    data = sq.load_bench_data("synthetic:120", holdout=40, search_val=20)
    budget = sq.Budget(2, 8, 1, 4)
    path = tmp_path / "cache.jsonl"
    first = sq.ground_truth(sq.TruthCache(path), NASNET_A, budget, data, 0, log=lambda s: None)
    with open(path, "a") as f:
        f.write('{"key": "torn')  # an interrupted write
    never = lambda *a, **k: pytest.fail("a cached cell was trained again")  # noqa: E731
    monkeypatch.setattr(sys.modules["quality_truth"], "train_child", never)  # where ground_truth looks it up
    again = sq.ground_truth(sq.TruthCache(path), NASNET_A, budget, data, 0, log=lambda s: None)
    assert again["accuracy"] == first["accuracy"] and 0 <= first["accuracy"] <= 1
    cache = sq.TruthCache(path)
    assert cache.get(NASNET_A, budget, data.key, 1) is None  # another seed, budget or data is another cell
    assert cache.get(NASNET_A, sq.Budget(3, 8, 1, 4), data.key, 0) is None


def test_holdout_is_never_in_the_search_split(sq):
    data = sq.load_bench_data("synthetic:200", holdout=50, search_val=30)
    seen = {a.tobytes() for a in np.concatenate([data.search.x_train, data.search.x_val])}
    assert len(data.truth.x_val) == 50 and not any(a.tobytes() in seen for a in data.truth.x_val)
    assert len(data.search.x_train) + len(data.search.x_val) == len(data.truth.x_train) == 150
    with pytest.raises(BadInputError, match="--holdout 0"):
        sq.load_bench_data("synthetic:200", holdout=0, search_val=30)


def test_protocol_end_to_end_tiny(sq, tmp_path, one_torch_thread):
    results, out = tmp_path / "results.json", tmp_path / "out.json"
    argv = ["run", "--data", "synthetic:240", "--holdout", "60", "--search-val", "40", "--budget", "3@8px:1@4",
            "--cells", "3", "--seeds", "2", "--noise-cells", "1", "--estimators", "params,madds,synflow,supernet,spos",
            "--estimator-opts", "ONESHOT.EPOCHS", "2", "ONESHOT.WEIGHT_STEPS", "1", "ONESHOT.CONTROLLER_STEPS", "1",
            "ONESHOT.FINAL_SAMPLES", "1", "ONESHOT.BATCH_SIZE", "8",
            "--strategies", "random,zero_cost[SEARCH.ZERO_COST.PROXY=params;SEARCH.ZERO_COST.CANDIDATES=3]",
            "--search-seeds", "0", "--search-opts", "SEARCH.BUDGET", "2",
            "SEARCH.BATCH_SIZE", "2", "CHILD.MAX_STEPS", "2", "--cache", str(tmp_path / "cache.jsonl"),
            "--json", str(out), "--results", str(results), "--threads", "1"]
    assert sq.main(argv) == 0
    res = json.loads(out.read_text())
    est = {e["estimator"]: e for e in res["estimators"]}
    assert set(est) == {"params", "madds", "synflow", "supernet", "spos"}
    for e in est.values():
        assert len(e["scores"]) == 4 and e["seconds_per_cell"] > 0
        for k in ("kendall", "spearman"):
            assert -1 <= e[f"{k}_lo"] <= e[f"{k}_hi"] <= 1 and -1 <= e[k] <= 1
    # today's one-shot supernet cannot score NASNet-A (a cell input among its loose ends): ranked without it
    assert est["supernet"]["n"] == 3 and est["supernet"]["unscored"] == ["NASNet-A"]
    assert est["supernet"]["scores"][0] is None
    assert all(e["n"] == 4 and e["unscored"] == [] for name, e in est.items() if name != "supernet")
    random_search, zero_cost = res["strategies"]
    assert random_search["strategy"] == "random" and zero_cost["strategy"].startswith("zero_cost[")
    for s in (random_search, zero_cost):
        assert 1 <= s["rank_among_random"] <= s["of"] == 4 and 0 <= s["accuracy"] <= 1
    (b,) = res["budget_study"]
    assert b["budget"] == "3@8px:1@4" and b["cells"] == 3 and len(b["nasnet_a_seeds"]) == 2 and b["seed_noise"] >= 0
    section = json.loads(results.read_text())["scripts"]["search_quality"]
    benches = [r["bench"] for r in section["rows"]]
    assert "search_quality budget 3@8px:1@4" in benches and "search_quality estimator synflow" in benches
    assert "search_quality strategy random seed 0" in benches
    # a second run trains and searches nothing: everything comes from the cache
    lines = (tmp_path / "cache.jsonl").read_text().count("\n")
    assert sq.main(argv) == 0 and (tmp_path / "cache.jsonl").read_text().count("\n") == lines
