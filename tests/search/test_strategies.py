"""The strategy registry: a new strategy is one class under ``@STRATEGIES.register()`` and runs in the same
session frame (journal, checkpoints, resume, outputs) as the built-in ones."""

from __future__ import annotations

import json
import math

import pytest
import torch

from search.cli import main
from search.config import identity_of, load_cfg
from search.journal import Journal, load_state
from search.reward import SyntheticOpReward
from search.runner import SearchRunner
from search.session import JOURNAL_NAME
from search.strategies import STRATEGIES, Strategy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@STRATEGIES.register()
class ToyMutation(Strategy):
    """A tiny evolution: each child is the best decisions seen so far with one decision re-drawn."""

    name = "toy_mutation"
    learns = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.best: list[int] | None = None
        self.best_reward, self.updates = -math.inf, 0

    def sample(self, n, generator):
        fresh = self.space.sample(n, generator)
        if self.best is None:
            return fresh, None
        out = torch.tensor([self.best] * n)
        col = int(torch.randint(0, out.shape[1], (1,), generator=generator))
        out[:, col] = fresh[:, col]
        return out, None

    def update(self, decisions, logprobs, rewards):
        assert logprobs is None  # it journaled none
        i = int(rewards.argmax())
        if float(rewards[i]) > self.best_reward:
            self.best, self.best_reward = decisions[i].tolist(), float(rewards[i])
        self.updates += 1
        return {"best": self.best_reward}

    def state_dict(self):
        return {"best": self.best, "best_reward": self.best_reward, "updates": self.updates}

    def load_state_dict(self, state):
        self.best, self.best_reward, self.updates = state["best"], state["best_reward"], state["updates"]


def _cfg(*opts):
    return load_cfg(None, ["SEARCH.STRATEGY", "toy_mutation,random", "SEARCH.BATCH_SIZE", "3",
                           "SEARCH.NUM_BLOCKS", "2", "WORKERS.BACKEND", "inline", *map(str, opts)])


def test_a_registered_strategy_runs_resumes_and_writes_outputs(tmp_path):
    first = SearchRunner(_cfg("SEARCH.BUDGET", 6), tmp_path, SyntheticOpReward(), progress=False).run()
    assert set(first["strategies"]) == {"toy_mutation", "random"}
    assert first["strategies"]["toy_mutation"]["ok"] == 6
    state = load_state(tmp_path / "controller_toy_mutation.pth")
    assert (state["step"], state["strategy"], state["updates"]) == (2, "toy_mutation", 2)
    assert (tmp_path / "best_genotype_toy_mutation.json").is_file()

    # a second run with a larger budget resumes the toy's state from its checkpoint
    SearchRunner(_cfg("SEARCH.BUDGET", 9), tmp_path, SyntheticOpReward(), progress=False).run()
    state = load_state(tmp_path / "controller_toy_mutation.pth")
    assert (state["step"], state["updates"]) == (3, 3)
    journal = Journal(tmp_path / JOURNAL_NAME)
    try:
        rows = journal.all("toy_mutation")
    finally:
        journal.close()
    assert len(rows) == 9 and all(r.logprob is None for r in rows)
    best = state["best"]
    # children sampled after the first update differ from the best so far in at most one decision
    later = [r.decisions for r in rows if r.policy >= 2]
    assert later and all(sum(a != b for a, b in zip(d, best)) <= 1 for d in later)


def test_unknown_or_uncombinable_strategies_get_one_line_naming_the_registered_ones(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path), "SEARCH.STRATEGY", "evolution"]) == 2
    err = capsys.readouterr().err.strip()
    assert "SEARCH.STRATEGY" in err and len(err.splitlines()) == 1
    for name in ("oneshot", "ppo", "random", "reinforce", "toy_mutation"):
        assert name in err
    with pytest.raises(ValueError, match="runs alone"):
        SearchRunner(load_cfg(None, ["SEARCH.STRATEGY", "ppo,oneshot"]), tmp_path)
    # one engine for every strategy: the weight-sharing one runs on it (the runner refused it before)
    assert list(SearchRunner(load_cfg(None, ["SEARCH.STRATEGY", "oneshot"]), tmp_path).strategy_classes) == ["oneshot"]
    with pytest.raises(ValueError, match="registered twice"):
        STRATEGIES.register(ToyMutation, name="ppo")


def test_the_summary_json_is_the_returned_summary(tmp_path):
    summary = SearchRunner(_cfg("SEARCH.BUDGET", 3), tmp_path, SyntheticOpReward(), progress=False).run()
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_strategy_names_in_any_case_give_the_identity_of_the_strategies_that_run():
    """The runner runs SEARCH.STRATEGY in any case (OneShot is oneshot): the journal's identity holds the same
    strategy settings, so a changed ONESHOT or SEARCH.ZERO_COST is refused whatever the case."""
    for spec, same in (("OneShot", "oneshot"), ("ZERO_COST", "zero_cost"), (" Random , PPO", "random,ppo")):
        assert identity_of(load_cfg(None, ["SEARCH.STRATEGY", spec])) == identity_of(
            load_cfg(None, ["SEARCH.STRATEGY", same])), spec
    assert "ONESHOT" in identity_of(load_cfg(None, ["SEARCH.STRATEGY", "OneShot"]))
