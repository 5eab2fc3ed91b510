"""Controller sampling/log-probs and the evidence that PPO searches (synthetic op-score reward)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasnet_det.search_space import SearchSpace
from nasnet_det.space import NUM_INPUTS
from search.config import load_cfg
from search.controller import Controller
from search.policy import PolicyTrainer
from search.reward import SyntheticOpReward
from search.runner import SearchRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("num_blocks", [5, 2])
def test_sampled_genotypes_are_valid_and_inputs_masked(num_blocks):
    c = Controller(num_blocks, hidden=16)
    actions, logp, ent = c.sample(64, torch.Generator().manual_seed(0))
    assert actions.shape == (64, 2 * 5 * num_blocks)
    assert torch.isfinite(logp).all() and (logp < 0).all() and (ent > 0).all()
    for row in actions.tolist():
        g = SearchSpace(num_blocks).genotype(row).validate(num_blocks)
        for cell in (g.normal, g.reduce):
            for b, block in enumerate(cell.blocks):
                assert max(block.inputs()) < NUM_INPUTS + b
    # every valid input of the last block is reachable, so masking does not just pin choices to 0
    last_input = 5 * (num_blocks - 1)  # input_1 of the normal cell's last block
    assert set(actions[:, last_input].tolist()) == set(range(NUM_INPUTS + num_blocks - 1))


def test_weights_initialised_uniform_in_range():
    c = Controller(5, hidden=100, init_range=0.1)
    for p in c.parameters():
        assert p.abs().max() <= 0.1


def test_logprob_of_sampled_actions_matches_recomputed():
    c = Controller(5, hidden=24)
    actions, logp, ent = c.sample(10, torch.Generator().manual_seed(3))
    logp2, ent2 = c.evaluate(actions)
    torch.testing.assert_close(logp2, logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent2, ent, rtol=1e-5, atol=1e-5)
    logp2.sum().backward()
    assert all(p.grad is not None for p in c.heads.parameters())


def test_evaluate_rejects_out_of_range_decisions():
    c = Controller(5, hidden=8)
    actions = torch.zeros(1, c.num_decisions, dtype=torch.long)
    actions[0, 0] = 2  # block 0 can only read states 0 and 1
    with pytest.raises(ValueError, match="decision 0"):
        c.evaluate(actions)


def test_policy_update_raises_probability_of_rewarded_actions():
    for algorithm in ("ppo", "reinforce"):
        torch.manual_seed(0)
        c = Controller(2, hidden=16)
        trainer = PolicyTrainer(c, algorithm, lr=0.05, entropy_weight=0.0)
        actions, logp, _ = c.sample(8, torch.Generator().manual_seed(1))
        rewards = torch.zeros(8)
        rewards[0] = 1.0
        before = c.evaluate(actions)[0].detach()
        trainer.update(actions, logp, rewards)
        after = c.evaluate(actions)[0].detach()
        assert after[0] > before[0], algorithm
        assert trainer.baseline is not None


def test_tied_rewards_do_not_blow_up_advantages():
    trainer = PolicyTrainer(Controller(2, hidden=8), "ppo")
    trainer.advantages(torch.tensor([0.4, 0.5, 0.6]))  # sets the baseline to ~0.5
    baseline = trainer.baseline
    adv = trainer.advantages(torch.full((4,), 0.6))  # every child of the batch got the same accuracy
    assert torch.isfinite(adv).all() and len(set(adv.tolist())) == 1
    # a 0.1 gap over the std floor (1e-3) would be ~100: it is clipped, and keeps its sign
    assert 0.6 > baseline and adv[0].item() == pytest.approx(5.0)
    trainer.baseline = 0.6 + 1e-4  # a gap below the floor is divided by the floor, not by ~1e-8
    adv = trainer.advantages(torch.full((4,), 0.6))
    assert adv[0].item() == pytest.approx(-1e-4 / 1e-3, rel=1e-3)
    # ordinary batches are still normalised by their std
    r = torch.tensor([0.2, 0.4, 0.6, 0.8])
    trainer.baseline = 0.5
    torch.testing.assert_close(trainer.advantages(r), (r - 0.5) / r.std())


def _synthetic_search(tmp_path, seed: int) -> dict:
    cfg = load_cfg(None, ["SEARCH.STRATEGY", "ppo,random", "SEARCH.BUDGET", "300", "SEARCH.BATCH_SIZE", "20",
                          "SEARCH.SEED", str(seed), "CONTROLLER.HIDDEN", "32", "CONTROLLER.LR", "0.03",
                          "WORKERS.BACKEND", "inline"])
    return SearchRunner(cfg, tmp_path / f"s{seed}", evaluator=SyntheticOpReward(seed), progress=False).run()


@pytest.mark.slow  # ~30-60 s: started first (tests/conftest.py)
def test_ppo_beats_random_on_synthetic_reward(tmp_path):
    for seed in range(3):
        s = _synthetic_search(tmp_path, seed)["strategies"]
        ppo, rnd = s["ppo"], s["random"]
        assert ppo["evaluations"] == rnd["evaluations"] == 300
        first, last = ppo["first_batches_mean"], ppo["last_batches_mean"]
        assert len(ppo["batch_means"]) == 15 and first == pytest.approx(np.mean(ppo["batch_means"][:3]))
        assert last > first + 0.1, (seed, first, last)
        assert last > rnd["mean_reward"] + 0.1, (seed, last, rnd["mean_reward"])
        assert abs(rnd["mean_reward"] - 0.5) < 0.05  # random search does not drift
    assert json.loads((tmp_path / "s0" / "summary.json").read_text())["best"]["strategy"] == "ppo"
