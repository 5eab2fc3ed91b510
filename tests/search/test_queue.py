"""The asynchronous work queue: every worker busy, strategies concurrent, exact resume after kill -9,
and the verdicts of a search with no usable result (every child failed) or a collapsed controller."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.search import queue_opts

from search.cli import main
from search.config import load_cfg
from search.journal import load_state
from search.reward import SleepingReward, SyntheticOpReward
from search.runner import SearchRunner
from search.session import JOURNAL_NAME

REPO = Path(__file__).resolve().parents[2]
SEED_BASE = 100_003  # the runner seeds child i with SEARCH.SEED * SEED_BASE + i (SEED 0 here: seed = id)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(out: Path) -> list[dict]:
    db = sqlite3.connect(out / JOURNAL_NAME)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM evaluations ORDER BY id")]
    db.close()
    return rows


def _calls(log: Path) -> list[tuple[int, float, float]]:
    if not log.is_file():
        return []
    return [(int(a), float(b), float(c)) for a, b, c in (line.split() for line in log.read_text().splitlines())]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    n = best = 0
    for _, d in events:
        n += d
        best = max(best, n)
    return best


def _check_busy(out: Path, log: Path, summary: dict, workers: int, batch: int, budget: int) -> None:
    q = summary["queue"]
    assert q["workers"] == workers and q["max_in_flight"] == workers + 1 > batch  # + 1 queued for the next free worker
    # every fill kept every worker busy while children were left, and the policy updates happened while
    # the other workers went on: no worker waited for a batch to finish
    assert q["idle_fills"] == 0
    assert q["policy_updates"] >= budget // batch - 1 and q["updates_while_children_ran"] == q["policy_updates"]
    # and the children really ran at the same time, more of them than a batch
    calls = _calls(log)
    assert len(calls) == 2 * budget
    assert _max_overlap([(s, e) for _, s, e in calls]) > batch
    rows = _rows(out)
    # the strategies ran concurrently, sharing the workers: the first children alternate between them
    first = [r["strategy"] for r in rows[:workers]]
    assert abs(first.count("ppo") - first.count("random")) <= 1
    # a child sampled after an update carries the newer policy version (the log-prob is that policy's)
    ppo = [r for r in rows if r["strategy"] == "ppo"]
    assert ppo[-1]["policy"] > 0 and all(r["logprob"] < 0 for r in ppo)


def test_local_queue_keeps_every_worker_busy(tmp_path):
    out, log = tmp_path / "run", tmp_path / "calls.txt"
    cfg = load_cfg(None, queue_opts("SEARCH.BUDGET", 10, "WORKERS.BACKEND", "local", "WORKERS.NUM_WORKERS", 3))
    summary = SearchRunner(cfg, out, SleepingReward(0, median_s=0.15, log_path=str(log)), False).run()
    assert summary["strategies"]["ppo"]["ok"] == summary["strategies"]["random"]["ok"] == 10
    _check_busy(out, log, summary, workers=3, batch=2, budget=10)


@pytest.mark.ray
def test_ray_queue_keeps_more_workers_than_a_batch_busy(tmp_path):
    ray = pytest.importorskip("ray")
    out, log = tmp_path / "run", tmp_path / "calls.txt"
    cfg = load_cfg(None, queue_opts("SEARCH.BUDGET", 8, "WORKERS.BACKEND", "ray", "WORKERS.NUM_WORKERS", 3))
    summary = SearchRunner(cfg, out, SleepingReward(0, median_s=0.3, log_path=str(log)), False).run()
    assert not ray.is_initialized()
    assert summary["strategies"]["ppo"]["ok"] == summary["strategies"]["random"]["ok"] == 8
    _check_busy(out, log, summary, workers=3, batch=2, budget=8)


_DRIVER = """
import sys
from search.config import load_cfg
from search.reward import SleepingReward
from search.runner import SearchRunner
cfg = load_cfg(None, sys.argv[3:])
SearchRunner(cfg, sys.argv[1], SleepingReward(0, median_s=0.3, log_path=sys.argv[2]), progress=False).run()
"""


@pytest.mark.slow  # a kill -9 drill
def test_kill_9_of_the_driver_mid_queue_resumes_exactly(tmp_path):
    out, log1, log2 = tmp_path / "run", tmp_path / "calls1.txt", tmp_path / "calls2.txt"
    opts = queue_opts("SEARCH.BUDGET", 8, "WORKERS.BACKEND", "local", "WORKERS.NUM_WORKERS", 2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(out), str(log1), *opts], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
            try:
                rows = _rows(out)
            except sqlite3.OperationalError:  # not created yet
                continue
            if sum(r["status"] == "ok" for r in rows) >= 5 and any(r["status"] == "pending" for r in rows):
                break
        assert driver.poll() is None, driver.stderr.read()
        driver.send_signal(signal.SIGKILL)  # mid-queue: some children finished, others running
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stderr.close()
    before = {r["id"]: r for r in _rows(out)}
    finished = {i for i, r in before.items() if r["status"] != "pending"}
    in_flight = {i for i, r in before.items() if r["status"] == "pending"}
    assert len(finished) >= 5 and in_flight
    time.sleep(0.5)  # the orphaned workers got SIGKILL with their driver: nothing more is written
    run1 = _calls(log1)

    cfg = load_cfg(None, opts[:-4] + ["WORKERS.BACKEND", "inline"])  # resume in-process (any backend will do)
    summary = SearchRunner(cfg, out, SleepingReward(0, median_s=0.3, log_path=str(log2)), False).run()
    rows = _rows(out)
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
    assert summary["strategies"]["ppo"]["ok"] == summary["strategies"]["random"]["ok"] == 8
    assert len({(r["strategy"], r["sample"]) for r in rows}) == 16
    assert len({(r["strategy"], r["batch"], r["slot"]) for r in rows}) == 16
    after = {r["id"]: r for r in rows}
    for i in finished:  # no finished child lost, changed or repeated
        assert after[i] == before[i]
    run2 = [seed for seed, _, _ in _calls(log2)]
    assert not finished & set(run2) and len(run2) == len(set(run2))
    assert sorted(seed for seed, _, _ in run1 if seed in finished) == sorted(finished)
    for i in in_flight:  # the children in flight were re-run, with the same genotypes and log-probs
        assert i in run2
        for key in ("strategy", "sample", "policy", "decisions", "genotype", "logprob"):
            assert after[i][key] == before[i][key]
    # the controller is exactly what the journal's batches give: rebuilding it from the journal alone
    # (no checkpoint) reproduces the checkpoint bit for bit
    ckpt = load_state(out / "controller_ppo.pth")
    assert ckpt["step"] == 4
    (out / "controller_ppo.pth").unlink()
    SearchRunner(cfg, out, SleepingReward(0), False).run()
    rebuilt = load_state(out / "controller_ppo.pth")
    assert rebuilt["step"] == 4
    for k, v in ckpt["controller"].items():
        assert torch.equal(v, rebuilt["controller"][k]), k


class AlwaysFails:
    def __call__(self, genotype, seed=0):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


def test_search_where_every_child_failed_says_so_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("search.runner.build_child_evaluator", lambda cfg: AlwaysFails())
    argv = ["--output-dir", str(tmp_path), "--no-progress", "WORKERS.BACKEND", "inline", "SEARCH.BUDGET", "4",
            "SEARCH.BATCH_SIZE", "2", "CONTROLLER.HIDDEN", "8"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "no usable result" in captured.err and "every one of its 4 finished children failed" in captured.err
    assert "illegal memory access" in captured.err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["usable"] is False and summary.get("best") is None and summary["problems"]
    assert main(argv) == 1  # a rerun (nothing left to do) gives the same verdict


def test_collapsed_controller_is_flagged_but_its_result_is_kept(tmp_path, caplog):
    # (the controller has collapsed by its 9th update: batches 9 and 10 sample one genotype each)
    cfg = load_cfg(None, ["SEARCH.BUDGET", "50", "SEARCH.BATCH_SIZE", "5", "CONTROLLER.HIDDEN", "16",
                          "CONTROLLER.LR", "1.0", "CONTROLLER.ENTROPY_WEIGHT", "0.0", "WORKERS.BACKEND", "inline"])
    summary = SearchRunner(cfg, tmp_path, SyntheticOpReward(0, noise=0.0), False).run()
    ppo = summary["strategies"]["ppo"]
    assert ppo["collapsed"] and ppo["last_batch_distinct_genotypes"] == 1
    assert any("collapsed onto one genotype" in p for p in summary["problems"])
    assert "collapsed onto one genotype" in caplog.text
    assert summary["usable"] and summary["best"]["reward"] > 0  # a usable result: exit code 0
    assert json.loads((tmp_path / "summary.json").read_text())["strategies"]["ppo"]["collapsed"]
    # a healthy search is not flagged
    healthy = SearchRunner(load_cfg(None, ["SEARCH.BUDGET", "10", "SEARCH.BATCH_SIZE", "5", "WORKERS.BACKEND",
                                           "inline"]), tmp_path / "ok", SyntheticOpReward(0), False).run()
    assert not healthy["strategies"]["ppo"]["collapsed"] and healthy["problems"] == []


def test_local_backend_honours_max_in_flight(tmp_path):
    # WORKERS.MAX_IN_FLIGHT caps the local backend as it caps Ray: 3 workers configured, 2 children at most
    out, log = tmp_path / "run", tmp_path / "calls.txt"
    cfg = load_cfg(None, queue_opts("SEARCH.BUDGET", 4, "WORKERS.BACKEND", "local", "WORKERS.NUM_WORKERS", 3,
                              "WORKERS.MAX_IN_FLIGHT", 2))
    summary = SearchRunner(cfg, out, SleepingReward(0, median_s=0.1, log_path=str(log)), False).run()
    assert summary["strategies"]["ppo"]["ok"] == summary["strategies"]["random"]["ok"] == 4
    assert summary["queue"]["workers"] == 2 and summary["queue"]["max_in_flight"] == 2
    assert _max_overlap([(s, e) for _, s, e in _calls(log)]) <= 2
