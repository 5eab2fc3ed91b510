"""The search loop: journal + resume, failing children, outputs, and the CLI end to end."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
from helpers.search import runner_cfg

import nasnet_det.utils.io as io_utils
from nasnet_det.models import create_model
from nasnet_det.space import Genotype
from search.cli import main
from search.config import load_cfg
from search.journal import Journal
from search.policy import PolicyTrainer
from search.reward import ChildEvaluator, SyntheticOpReward
from search.runner import SearchRunner
from search.session import JOURNAL_NAME

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(out: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / JOURNAL_NAME)
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT * FROM evaluations ORDER BY id").fetchall()
    db.close()
    return rows


class CountingReward(SyntheticOpReward):
    """Synthetic reward that records each call and can simulate a kill after ``kill_after`` calls."""

    def __init__(self, kill_after: int | None = None):
        super().__init__(0, noise=0.0)
        self.calls: list[str] = []
        self.kill_after = kill_after

    def __call__(self, genotype, seed=0):
        if self.kill_after is not None and len(self.calls) >= self.kill_after:
            raise KeyboardInterrupt  # like Ctrl-C / SIGINT in the middle of a batch
        self.calls.append(genotype.to_json(None))
        return super().__call__(genotype, seed)


def _check_complete(out: Path, budget: int, first_run: list[sqlite3.Row]):
    rows = _rows(out)
    assert len(rows) == budget and all(r["status"] == "ok" for r in rows)
    assert len({(r["batch"], r["slot"]) for r in rows}) == budget
    kept = {r["id"]: r["reward"] for r in first_run if r["status"] == "ok"}
    assert kept and all(rows[i - 1]["reward"] == reward for i, reward in kept.items())


@pytest.mark.parametrize("strategy", ["ppo", "random"])
def test_resume_after_max_evals_repeats_nothing(tmp_path, strategy):
    out = tmp_path / "run"
    r1 = CountingReward()
    s1 = SearchRunner(runner_cfg("SEARCH.STRATEGY", strategy, "SEARCH.MAX_EVALS_THIS_RUN", 7), out, r1, False).run()
    assert s1["stopped_early"] and len(r1.calls) == 7
    first = _rows(out)
    # the queue samples a child only when a worker is free for it: nothing beyond the limit was sampled
    assert [r["status"] for r in first] == ["ok"] * 7
    r2 = CountingReward()
    s2 = SearchRunner(runner_cfg("SEARCH.STRATEGY", strategy), out, r2, False).run()
    assert not s2["stopped_early"] and len(r2.calls) == 13
    _check_complete(out, 20, first)
    if strategy == "random":  # later children are fresh samples, not replays of the first run's
        assert not set(r1.calls) & set(r2.calls)
    # a third run has nothing left to do
    r3 = CountingReward()
    summary = SearchRunner(runner_cfg("SEARCH.STRATEGY", strategy), out, r3, False).run()
    assert summary["strategies"][strategy]["ok"] == 20
    assert r3.calls == []


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo"), tmp_path / "a", CountingReward(kill_after=12), False).run()
    first = _rows(tmp_path / "a")
    assert sum(r["status"] == "ok" for r in first) == 12
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo"), tmp_path / "a", CountingReward(), False).run()
    _check_complete(tmp_path / "a", 20, first)
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo"), tmp_path / "b", CountingReward(), False).run()
    # same sampled decisions as a run that was never interrupted (controller state + RNG restored)
    assert [r["decisions"] for r in _rows(tmp_path / "a")] == [r["decisions"] for r in _rows(tmp_path / "b")]


def test_resume_at_a_batch_boundary_samples_with_the_policy_an_uninterrupted_run_used(tmp_path):
    # stopped right after a batch finished (no child pending): the next child must be sampled by the same
    # policy version, with the same decisions, as in a run that never stopped there
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo", "SEARCH.MAX_EVALS_THIS_RUN", 10), tmp_path / "a",
                 CountingReward(), False).run()
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo"), tmp_path / "a", CountingReward(), False).run()
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo"), tmp_path / "b", CountingReward(), False).run()
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["policy"] for r in a] == [r["policy"] for r in b] == [i // 5 for i in range(20)]
    assert [r["decisions"] for r in a] == [r["decisions"] for r in b]


def test_resume_refuses_different_settings(tmp_path):
    SearchRunner(runner_cfg("SEARCH.BUDGET", 5), tmp_path, CountingReward(), False).run()
    with pytest.raises(ValueError, match="MODEL.NASNET"):
        SearchRunner(runner_cfg("SEARCH.BUDGET", 5, "MODEL.NASNET.FILTERS", 16), tmp_path, CountingReward(),
                     False).run()


def test_a_search_journaled_before_model_nasnet_still_resumes(tmp_path):
    """Journals written when the children's network was CHILD.NUM_CELLS / FILTERS hold that identity."""
    SearchRunner(runner_cfg("SEARCH.BUDGET", 5, "SEARCH.MAX_EVALS_THIS_RUN", 3), tmp_path, CountingReward(),
                 False).run()
    journal = Journal(tmp_path / JOURNAL_NAME)
    old = journal.get_meta("identity")
    network = old.pop("MODEL.NASNET")
    old["CHILD"] = {"NUM_CELLS": network["NUM_CELLS"], "FILTERS": network["FILTERS"], **old["CHILD"]}
    journal.set_meta("identity", old)  # as the version before MODEL.NASNET wrote it
    journal.close()
    rewards = CountingReward()
    assert SearchRunner(runner_cfg("SEARCH.BUDGET", 5), tmp_path, rewards, False).run()["strategies"]["ppo"]["ok"] == 5
    assert len(rewards.calls) == 2
    # the preset's name is not a setting: paper.yaml's name for the same network resumes too
    SearchRunner(runner_cfg("SEARCH.BUDGET", 5, "MODEL.NASNET.PRESET", "search_child_paper",
                            "MODEL.NASNET.NUM_CELLS", 1, "MODEL.NASNET.FILTERS", 8), tmp_path, CountingReward(),
                 False).run()
    # nor is the memory layout, which journals from before MODEL.NASNET.CHANNELS_LAST do not record
    journal = Journal(tmp_path / JOURNAL_NAME)
    recorded = journal.get_meta("identity")
    assert "CHANNELS_LAST" not in recorded["MODEL.NASNET"]
    recorded["MODEL.NASNET"]["CHANNELS_LAST"] = True  # a journal that did record it
    journal.set_meta("identity", recorded)
    journal.close()
    SearchRunner(runner_cfg("SEARCH.BUDGET", 6, "MODEL.NASNET.CHANNELS_LAST", False), tmp_path, CountingReward(),
                 False).run()
    # ... and other children are still refused, naming the key
    journal = Journal(tmp_path / JOURNAL_NAME)
    journal.set_meta("identity", {**old, "CHILD": {**old["CHILD"], "FILTERS": 16}})
    journal.close()
    with pytest.raises(ValueError, match=r"different settings \(MODEL.NASNET\)"):
        SearchRunner(runner_cfg("SEARCH.BUDGET", 5), tmp_path, CountingReward(), False).run()


class FlakyReward(SyntheticOpReward):
    """Child 2 runs out of GPU memory, child 4 diverges (NaN reward), the rest succeed."""

    def __call__(self, genotype, seed=0):
        self.n = getattr(self, "n", 0) + 1
        if self.n == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if self.n == 4:
            return {"reward": math.nan}
        return super().__call__(genotype, seed)


def test_failing_children_are_recorded_and_search_continues(tmp_path):
    s = SearchRunner(runner_cfg("SEARCH.BUDGET", 10), tmp_path, FlakyReward(), False).run()["strategies"]["ppo"]
    assert (s["evaluations"], s["ok"], s["failed"]) == (10, 8, 2)
    rows = _rows(tmp_path)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed[0]["error"].startswith("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "reward is nan" in failed[1]["error"]
    assert all(r["reward"] is None for r in failed)
    # the batch means (summary, plot) group by policy batch: 2 batches of 5, failures left out of the mean
    ok = [r for r in rows if r["status"] == "ok"]
    assert s["batch_means"] == pytest.approx([
        sum(r["reward"] for r in ok if r["batch"] == b) / sum(r["batch"] == b for r in ok) for b in (0, 1)])
    assert (s["first_batches_mean"], s["last_batches_mean"]) == (s["batch_means"][0], s["batch_means"][1])


@pytest.mark.parametrize("failed_reward", [-1.0, None])
def test_failed_children_enter_the_policy_update_with_failed_reward(tmp_path, monkeypatch, failed_reward):
    seen = []
    real_update = PolicyTrainer.update

    def spy(self, actions, old_logp, rewards):
        seen.append(rewards.tolist())
        return real_update(self, actions, old_logp, rewards)

    monkeypatch.setattr(PolicyTrainer, "update", spy)
    SearchRunner(runner_cfg("SEARCH.BUDGET", 10, "CONTROLLER.FAILED_REWARD", failed_reward), tmp_path, FlakyReward(),
                 False).run()
    rows = _rows(tmp_path)
    first_batch = [r for r in rows if r["batch"] == 0]
    if failed_reward is None:  # failed children (slots 1 and 3) are left out
        assert seen[0] == pytest.approx([r["reward"] for r in first_batch if r["status"] == "ok"])
    else:
        assert seen[0] == pytest.approx([r["reward"] if r["status"] == "ok" else failed_reward
                                         for r in first_batch])
    assert len(seen) == 2


def test_two_searches_cannot_share_an_output_dir(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / "journal.lock", "a+") as other:  # another search holds the directory
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = CountingReward()
        with pytest.raises(ValueError, match="in use by another search"):
            SearchRunner(runner_cfg("SEARCH.BUDGET", 5), tmp_path, r, False).run()
        assert r.calls == [] and not (tmp_path / JOURNAL_NAME).exists()
    # once it is released (e.g. that search ended or was killed) the directory is usable again
    s = SearchRunner(runner_cfg("SEARCH.BUDGET", 5), tmp_path, CountingReward(), False).run()
    assert s["strategies"]["ppo"]["ok"] == 5


def test_bad_child_settings_fail_before_any_child(tmp_path):
    for key, value in (("CHILD.EPOCHS", 0), ("CHILD.BATCH_SIZE", 0), ("CHILD.MAX_STEPS", -1)):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            SearchRunner(runner_cfg(key, value), tmp_path, CountingReward(), False)
    with pytest.raises(ValueError, match=r"CHILD\.EPOCHS"):
        ChildEvaluator({**dict(load_cfg().CHILD), "EPOCHS": 0}, None)


def test_outputs_best_genotype_plot_and_drawing(tmp_path):
    s = SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo,random", "SEARCH.BUDGET", 10), tmp_path,
                     SyntheticOpReward(0), False).run()
    best = Genotype.load(tmp_path / "best_genotype.json")
    rows = {r["id"]: r for r in _rows(tmp_path)}
    assert best.to_dict()["normal"] == json.loads(rows[s["best"]["id"]]["genotype"])["normal"]
    assert max(r["reward"] for r in rows.values()) == s["best"]["reward"]
    for name in ("best_genotype_ppo.json", "best_genotype_random.json"):
        Genotype.load(tmp_path / name)
    net = create_model("nasnet_a_cifar", genotype=best, num_cells=1, filters=4, aux_head=False)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    for png in ("rewards.png", "best_cells.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    top = json.loads((tmp_path / "top_k.json").read_text())
    assert len(top) == 5 and [t["reward"] for t in top] == sorted((t["reward"] for t in top), reverse=True)
    assert Journal(tmp_path / JOURNAL_NAME).strategies() == ["ppo", "random"]
    # --fresh clears the old run's outputs with its journal: a new run that writes fewer must not mix them.
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "random", "SEARCH.BUDGET", 5, "SEARCH.MAX_EVALS_THIS_RUN", 2), tmp_path,
                 SyntheticOpReward(0), False, fresh=True).run()
    assert not (tmp_path / "best_genotype_ppo.json").exists() and not (tmp_path / "controller_ppo.pth").exists()
    assert Journal(tmp_path / JOURNAL_NAME).strategies() == ["random"]


def test_a_kill_while_writing_outputs_leaves_the_previous_best_genotype_loadable(tmp_path, monkeypatch):
    SearchRunner(runner_cfg("SEARCH.BUDGET", 5), tmp_path, CountingReward(), False).run()
    before = (tmp_path / "best_genotype.json").read_text()
    real_write = io_utils.atomic_open

    @contextlib.contextmanager
    def torn_write(path, mode="w", **kwargs):  # the process dies halfway through writing a file
        with real_write(path, mode, **kwargs) as f:
            f.write("{\"torn\": " if "b" not in mode else b"\x00")
            raise KeyboardInterrupt

    monkeypatch.setattr(io_utils, "atomic_open", torn_write)
    with pytest.raises(KeyboardInterrupt):
        SearchRunner(runner_cfg("SEARCH.BUDGET", 10), tmp_path, CountingReward(), False).run()
    monkeypatch.undo()
    for name in ("best_genotype.json", "best_genotype_ppo.json"):
        Genotype.load(tmp_path / name)  # intact: the torn text went to a temporary file
    assert (tmp_path / "best_genotype.json").read_text() == before


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["--config-file", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["--output-dir", str(tmp_path), "SEARCH.STRATEGY", "evolution"]) == 2
    assert "SEARCH.STRATEGY" in capsys.readouterr().err
    assert main(["--output-dir", str(tmp_path / "x"), "--resume"]) == 2
    assert "no journal" in capsys.readouterr().err
    # a mistyped key names the key and the valid ones next to it (no yacs AssertionError traceback)
    assert main(["--output-dir", str(tmp_path), "SEARCH.BUDGT", "4"]) == 2
    err = capsys.readouterr().err
    assert "SEARCH.BUDGT" in err and "BUDGET" in err
    # an option after the overrides is refused, not swallowed as a config key
    assert main(["--output-dir", str(tmp_path), "SEARCH.BUDGET", "4", "--fresh"]) == 2
    assert "--fresh comes after the KEY VALUE overrides" in capsys.readouterr().err
    assert main(["--output-dir", str(tmp_path), "CHILD.EPOCHS", "0"]) == 2
    assert "CHILD.EPOCHS=0" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text("SEARCH:\n  BATCHSIZE: 4\n")
    assert main(["--config-file", str(tmp_path / "typo.yaml")]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml" in err and "SEARCH.BATCHSIZE" in err
    assert not (tmp_path / JOURNAL_NAME).exists()  # nothing ran


@pytest.mark.slow  # ~30-60 s: started first (tests/conftest.py)
def test_cli_smoke_config_end_to_end(tmp_path, capsys):
    out = tmp_path / "smoke"
    argv = ["--config-file", str(REPO / "configs/search/smoke.yaml"), "--output-dir", str(out), "--no-progress",
            "DATA.SOURCE", "npz:builtin", "SEARCH.BUDGET", "4", "SEARCH.BATCH_SIZE", "2",
            "CHILD.MAX_STEPS", "4", "DATA.TRAIN_LIMIT", "300", "DATA.VAL_SIZE", "200",
            "SEARCH.ZERO_COST.CANDIDATES", "8", "ESTIMATORS.AZ_NAS.REFERENCE_CELLS", "4"]  # its proxy, cheaper
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["strategies"]) == {"zero_cost", "random"}  # the smoke config's default strategies
    for name in ("zero_cost", "random"):
        s = printed["strategies"][name]
        assert s["evaluations"] == 4 and s["ok"] == 4
        assert 0.0 <= s["best_reward"] <= 1.0
    rows = _rows(out)
    assert all(r["params"] > 0 and r["seconds"] > 0 for r in rows)
    Genotype.load(out / "best_genotype.json")
    assert (out / "rewards.png").stat().st_size > 0 and (out / "best_cells.png").stat().st_size > 0
    assert main(argv) == 0  # rerun: everything is already done
    assert len(_rows(out)) == 8


_BATCH_SYNCHRONOUS_SCHEMA = """
CREATE TABLE evaluations (id INTEGER PRIMARY KEY AUTOINCREMENT, strategy TEXT NOT NULL, batch INTEGER NOT NULL,
    slot INTEGER NOT NULL, decisions TEXT NOT NULL, genotype TEXT NOT NULL, logprob REAL,
    status TEXT NOT NULL DEFAULT 'pending', reward REAL, seconds REAL, params INTEGER, error TEXT,
    created REAL NOT NULL, finished REAL, UNIQUE (strategy, batch, slot))"""


def test_a_batch_synchronous_journal_is_upgraded_and_resumes(tmp_path):
    """A journal of the earlier batch-synchronous search: batch 0 done, batch 1 interrupted with the
    children of slots 0 and 3 finished and slots 1, 2 and 4 pending."""
    SearchRunner(runner_cfg("SEARCH.BUDGET", 10, "SEARCH.MAX_EVALS_THIS_RUN", 7), tmp_path, CountingReward(),
                 False).run()
    new = _rows(tmp_path)
    db = sqlite3.connect(tmp_path / JOURNAL_NAME)
    db.execute("DROP TABLE evaluations")
    db.execute(_BATCH_SYNCHRONOUS_SCHEMA)
    layout = [(0, s, "ok") for s in range(5)] + [(1, 0, "ok"), (1, 1, "pending"), (1, 2, "pending"), (1, 3, "ok"),
                                                 (1, 4, "pending")]
    for i, (batch, slot, status) in enumerate(layout):
        r = new[i % 7]
        ok = status == "ok"
        db.execute("INSERT INTO evaluations (strategy, batch, slot, decisions, genotype, logprob, status, reward, "
                   "seconds, created, finished) VALUES ('ppo', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (batch, slot, r["decisions"], r["genotype"], r["logprob"], status, 0.1 * i if ok else None,
                    1.0 if ok else None, 100.0 + i, 200.0 + i if ok else None))
    db.commit()
    db.close()
    (tmp_path / "controller_ppo.pth").unlink()  # rebuilt from the journal's batch 0
    rewards = CountingReward()
    s = SearchRunner(runner_cfg("SEARCH.BUDGET", 10), tmp_path, rewards, False).run()["strategies"]["ppo"]
    assert s["ok"] == 10 and len(rewards.calls) == 3  # only the 3 pending children ran
    rows = _rows(tmp_path)
    assert [json.loads(rows[i]["genotype"]) for i in (6, 7, 9)] == \
        [Genotype.from_json(c).to_dict() for c in rewards.calls]
    assert [r["reward"] for r in rows[:6]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert rows[8]["reward"] == pytest.approx(0.8)
    # batch 1: the two that had finished first (in finishing order), then the three re-run
    assert [(r["batch"], r["slot"]) for r in (rows[5], rows[8])] == [(1, 0), (1, 1)]
    assert sorted(r["slot"] for r in rows if r["batch"] == 1) == [0, 1, 2, 3, 4]
    assert [r["sample"] for r in rows] == list(range(10)) and [r["policy"] for r in rows] == [0] * 5 + [1] * 5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_a_damaged_journal_is_one_line_with_a_way_out_that_moves_it_aside(tmp_path, damage):
    out = tmp_path / "run"
    SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo", "SEARCH.MAX_EVALS_THIS_RUN", 7), out, CountingReward(),
                 False).run()  # a half-finished search
    path = out / JOURNAL_NAME
    if damage == "garbage":
        path.write_bytes(b"this is not a database\n" * 50)
    elif damage == "truncated":  # the header survives, the pages do not
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    else:  # a database, but not a journal
        path.unlink()
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE evaluations (x INTEGER)")
    damaged = path.read_bytes()
    for _ in range(2):  # the same line each time, and the file left as it was
        with pytest.raises(ValueError, match=r"journal.sqlite is not a readable search journal .*; to search again "
                                             r"from the start, rerun with SEARCH.DAMAGED_JOURNAL restart") as e:
            SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo"), out, CountingReward(), False).run()
        assert "\n" not in str(e.value) and path.read_bytes() == damaged
    # the way out: the journal (and the controller checkpoint that went with it) moved aside, never deleted
    reward = CountingReward()
    summary = SearchRunner(runner_cfg("SEARCH.STRATEGY", "ppo", "SEARCH.DAMAGED_JOURNAL", "restart"), out, reward,
                           False).run()
    aside = list(out.glob(JOURNAL_NAME + ".damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert summary["strategies"]["ppo"]["ok"] == 20 and len(reward.calls) == 20
    with pytest.raises(ValueError, match=r"SEARCH.DAMAGED_JOURNAL='sometimes': expected 'stop' or 'restart'"):
        runner_cfg("SEARCH.DAMAGED_JOURNAL", "sometimes")
