"""The zero_cost and predictor strategies: tiny searches on the queue with a synthetic reward, resumed after
an interruption to the same journal, and the predictor finding better cells than random search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import Genotype
from search.base_config import IDENTITY_KEYS
from search.config import identity_of, load_cfg
from search.estimators import build_estimator
from search.journal import Journal
from search.reward import SyntheticOpReward
from search.runner import SearchRunner
from search.session import JOURNAL_NAME
from search.strategies.zero_cost import SCORES_NAME, proxy_identity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(strategy, *opts):
    return load_cfg(None, ["SEARCH.STRATEGY", strategy, "SEARCH.NUM_BLOCKS", "2", "SEARCH.BATCH_SIZE", "3",
                           "WORKERS.BACKEND", "inline", "MODEL.NASNET.FILTERS", "4", "CHILD.IMAGE_SIZE", "8",
                           *map(str, opts)])


def _decisions(out, strategy):
    journal = Journal(out / JOURNAL_NAME)
    try:
        return [(r.decisions, r.status, r.reward) for r in journal.all(strategy)]
    finally:
        journal.close()


def _interrupted_and_whole(tmp_path, cfg_of, stop_after=4):
    whole = tmp_path / "whole"
    SearchRunner(cfg_of(), whole, SyntheticOpReward(noise=0.0), progress=False).run()
    cut = tmp_path / "cut"
    first = SearchRunner(cfg_of("SEARCH.MAX_EVALS_THIS_RUN", stop_after), cut, SyntheticOpReward(noise=0.0),
                         progress=False).run()
    assert first["stopped_early"]
    SearchRunner(cfg_of(), cut, SyntheticOpReward(noise=0.0), progress=False).run()
    return whole, cut


def test_zero_cost_trains_the_best_ranked_candidates_and_resumes(tmp_path):
    def cfg_of(*opts):
        return _cfg("zero_cost", "SEARCH.BUDGET", 4, "SEARCH.ZERO_COST.PROXY", "synflow",
                    "SEARCH.ZERO_COST.CANDIDATES", 8, *opts)

    whole, cut = _interrupted_and_whole(tmp_path, cfg_of, stop_after=2)
    rows = _decisions(whole, "zero_cost")
    assert _decisions(cut, "zero_cost") == rows and len(rows) == 4 and all(s == "ok" for _, s, _ in rows)
    saved = json.loads((whole / SCORES_NAME).read_text())
    assert saved["proxy"] == "synflow" and len(saved["scores"]) == 8
    # the children are the 4 candidates the proxy ranks highest, best first
    est = build_estimator("synflow", cfg_of())
    est.prepare(None, 0)
    scores = [est.score(SearchSpace(2).genotype(d)) for d in saved["candidates"]]
    assert scores == pytest.approx(saved["scores"])
    top = [saved["candidates"][i] for i in np.argsort(-np.array(scores), kind="stable")[:4]]
    assert [d for d, _, _ in rows] == top
    best = Genotype.load(whole / "best_genotype_zero_cost.json")  # the found cell: the best trained child
    found = SearchSpace(2).genotype(max(rows, key=lambda r: r[2])[0])
    assert (best.normal, best.reduce) == (found.normal, found.reduce)


def test_a_zero_cost_search_resumed_with_other_proxy_settings_is_refused(tmp_path):
    # the proxy's minibatch changes every score (NASWOT's log-det grows with it): mixing them would rank
    # candidates by incomparable numbers
    def cfg_of(*opts):
        return _cfg("zero_cost", "SEARCH.BUDGET", 2, "SEARCH.ZERO_COST.CANDIDATES", 4, *opts)

    SearchRunner(cfg_of("SEARCH.MAX_EVALS_THIS_RUN", 1), tmp_path, SyntheticOpReward(noise=0.0), progress=False).run()
    with pytest.raises(ValueError, match=r"different settings \(SEARCH\.ZERO_COST"):
        SearchRunner(cfg_of("SEARCH.ZERO_COST.BATCH_SIZE", 8), tmp_path, SyntheticOpReward(noise=0.0),
                     progress=False).run()


def test_zero_cost_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="SEARCH.ZERO_COST.PROXY='flops'"):
        SearchRunner(_cfg("zero_cost", "SEARCH.ZERO_COST.PROXY", "flops"), tmp_path / "a", SyntheticOpReward()).run()
    with pytest.raises(ValueError, match="SEARCH.ZERO_COST.CANDIDATES=5: expected at least SEARCH.BUDGET"):
        SearchRunner(_cfg("zero_cost", "SEARCH.ZERO_COST.CANDIDATES", 5, "SEARCH.BUDGET", 6), tmp_path / "b",
                     SyntheticOpReward()).run()


def test_predictor_resumes_to_the_same_journal(tmp_path):
    def cfg_of(*opts):
        return _cfg("predictor", "SEARCH.BUDGET", 12, "SEARCH.PREDICTOR.INITIAL", 3, "SEARCH.PREDICTOR.ENSEMBLE", 5,
                    *opts)

    whole, cut = _interrupted_and_whole(tmp_path, cfg_of)
    rows = _decisions(whole, "predictor")
    assert _decisions(cut, "predictor") == rows and len(rows) == 12
    assert len({tuple(d) for d, _, _ in rows}) == 12  # never the same cell twice


def test_predictor_beats_random_search_on_the_synthetic_reward(tmp_path):
    """Budget 40 (10 random, then 30 proposed), B=2, noise 0.05, 4 seeds: the predictor's later children are
    better than random's in every seed, and the cell it finds is better on average."""
    reward = SyntheticOpReward(seed=0)
    found_margin, later = [], []
    for seed in range(4):
        cfg = _cfg("predictor,random", "SEARCH.BUDGET", 40, "SEARCH.BATCH_SIZE", 5, "SEARCH.SEED", seed,
                   "SEARCH.PREDICTOR.INITIAL", 10)
        out = tmp_path / str(seed)
        SearchRunner(cfg, out, SyntheticOpReward(seed=0, noise=0.05), progress=False).run()
        found, late = {}, {}
        for name in ("predictor", "random"):
            rows = _decisions(out, name)
            best = max(rows, key=lambda r: r[2])[0]  # the cell the search picks (by its noisy reward)
            found[name] = reward.clean(SearchSpace(2).genotype(best))
            late[name] = np.mean([reward.clean(SearchSpace(2).genotype(d)) for d, _, _ in rows[20:]])
        found_margin.append(found["predictor"] - found["random"])
        later.append(late["predictor"] - late["random"])
    assert min(later) > 0.05, later
    assert np.mean(found_margin) > 0, found_margin


def test_a_few_shot_supernet_ranks_the_candidates_of_a_zero_cost_search(tmp_path):
    """SEARCH.STRATEGY zero_cost with a supernet estimator as its proxy is the few-shot supernet search: the
    sub-supernets are trained once, then rank the candidates, and the best ranked are trained as children."""
    cfg = _cfg("zero_cost", "SEARCH.BUDGET", 2, "SEARCH.ZERO_COST.PROXY", "fewshot_bn",
               "SEARCH.ZERO_COST.CANDIDATES", 4, "DATA.SOURCE", "synthetic:80", "DATA.VAL_SIZE", 20,
               "ONESHOT.EPOCHS", 1, "ONESHOT.WEIGHT_STEPS", 2, "ONESHOT.BATCH_SIZE", 8, "ONESHOT.FEW_SHOT_SPLITS", 2,
               "ONESHOT.BN_RECALIBRATION_BATCHES", 1)
    SearchRunner(cfg, tmp_path, SyntheticOpReward(noise=0.0), progress=False).run()
    saved = json.loads((tmp_path / SCORES_NAME).read_text())
    assert saved["proxy"] == "fewshot_bn" and len(saved["scores"]) == 4
    assert all(0 <= s <= 1 for s in saved["scores"])  # held-out accuracies of the candidates' paths
    rows = _decisions(tmp_path, "zero_cost")
    ranked = [saved["candidates"][i] for i in np.argsort(-np.array(saved["scores"]), kind="stable")[:2]]
    assert [d for d, _, _ in rows] == ranked


def test_a_supernet_proxy_search_resumed_with_other_oneshot_settings_is_refused(tmp_path):
    """The proxy's scores depend on ONESHOT (its supernet's training): a rerun with another ONESHOT.EPOCHS is
    refused in one line instead of ranking by the old supernet's scores; the scores file names them too."""
    def cfg_of(*opts):
        return _cfg("zero_cost", "SEARCH.BUDGET", 2, "SEARCH.ZERO_COST.PROXY", "spos", "SEARCH.ZERO_COST.CANDIDATES", 3,
                    "DATA.SOURCE", "synthetic:40", "DATA.VAL_SIZE", 10, "ONESHOT.WEIGHT_STEPS", 1,
                    "ONESHOT.BATCH_SIZE", 8, *opts)

    SearchRunner(cfg_of("ONESHOT.EPOCHS", 1, "SEARCH.MAX_EVALS_THIS_RUN", 1), tmp_path, SyntheticOpReward(noise=0.0),
                 progress=False).run()
    assert json.loads((tmp_path / SCORES_NAME).read_text())["estimator"]["ONESHOT"]["EPOCHS"] == 1
    with pytest.raises(ValueError, match=r"different settings \(ONESHOT\)"):
        SearchRunner(cfg_of("ONESHOT.EPOCHS", 2), tmp_path, SyntheticOpReward(noise=0.0), progress=False).run()
    # where it runs changes no score: the search resumes
    SearchRunner(cfg_of("ONESHOT.EPOCHS", 1, "ONESHOT.DEVICE", "cpu"), tmp_path, SyntheticOpReward(noise=0.0),
                 progress=False).run()
    assert len(_decisions(tmp_path, "zero_cost")) == 2


def test_a_proxy_without_settings_of_its_own_adds_nothing_to_the_identity():
    """Journals of zero_cost searches with a proxy at initialisation, and their scores files, keep the identity
    they had before estimators carried one, so those output folders resume."""
    for proxy in ("synflow", "naswot", "params"):
        identity = identity_of(_cfg("zero_cost", "SEARCH.ZERO_COST.PROXY", proxy))
        assert set(identity) == {*IDENTITY_KEYS, "SEARCH.ZERO_COST"}, proxy
        assert proxy_identity(_cfg("zero_cost", "SEARCH.ZERO_COST.PROXY", proxy)) == {}


def test_an_estimator_built_on_others_carries_their_identity():
    """The ensemble's scores depend on its members': a supernet member brings ONESHOT, zico its own node."""
    cfg = _cfg("zero_cost", "SEARCH.ZERO_COST.PROXY", "ensemble", "ESTIMATORS.ENSEMBLE.MEMBERS", "zico,spos")
    assert {"ESTIMATORS.ENSEMBLE", "ESTIMATORS.ZICO", "ONESHOT"} <= set(identity_of(cfg))
    assert set(proxy_identity(_cfg("zero_cost", "SEARCH.ZERO_COST.PROXY", "zico"))) == {"ESTIMATORS.ZICO"}
