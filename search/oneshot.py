"""Weight-sharing (ENAS-style) search in the NASNet space: ``SEARCH.STRATEGY oneshot``.

Each epoch alternates two phases:

1. supernet: ``ONESHOT.WEIGHT_STEPS`` SGD steps on the training split, each on one cell sampled from the
   controller (cross-entropy, Nesterov, cosine LR over all steps);
2. controller: ``ONESHOT.CONTROLLER_STEPS`` policy updates (REINFORCE or PPO, :mod:`search.policy`), each on
   ``SEARCH.BATCH_SIZE`` sampled cells scored with the shared weights on one held-out minibatch each.

Then ``ONESHOT.FINAL_SAMPLES`` cells are sampled from the trained controller and scored on the whole held-out
split; the best of them is ``best_genotype.json``. Every scored cell is journaled (strategy ``oneshot`` for
the controller phase, ``oneshot_derive`` for the final samples), and the outputs are the ones every search
writes (:func:`search.outputs.write_outputs`).

Distributed: launched by ``torchrun --nproc_per_node K`` the supernet phase runs as DDP (nccl on GPUs, gloo
on CPUs): every process samples the same cell from the same seeded generator and trains it on its 1/K share of
``ONESHOT.BATCH_SIZE``; gradients are averaged. The controller phase runs identically in every process with the
rewards of rank 0 (broadcast), and only rank 0 writes the journal, checkpoints and outputs.

Resuming: ``oneshot_state.pth`` (supernet, controller, both optimizers, the reward baseline, the random
generators and the position) is written atomically every ``ONESHOT.CHECKPOINT_EVERY`` supernet steps and after
every controller update. A rerun restarts from it; the steps since it are redone identically (one seeded
generator drives every random choice), and journal rows of an interrupted controller update are completed,
never duplicated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fvcore.common.config import CfgNode
from tqdm import tqdm

from nasnet_det.engine.devices import require_cuda
from nasnet_det.engine.distributed import barrier, init_distributed
from nasnet_det.engine.rng import capture_rng_state, restore_rng_state
from nasnet_det.utils.io import atomic_torch_save
from search.config import check_cfg
from search.journal import Journal, load_state
from search.objective import Objective
from search.outputs import problems_of, strategy_summary, write_outputs
from search.plots import plot_rewards
from search.reward import ChildData, build_child, load_search_data
from search.session import SearchSession
from search.strategies import resolve_strategies
from search.strategies.oneshot import OneShot
from search.supernet_trainer import SupernetTrainer
from search.workers import COST_FIELDS

log = logging.getLogger(__name__)
SEARCH_NAME = "oneshot"          # journal strategy of the cells scored while training the controller
DERIVE_NAME = "oneshot_derive"   # journal strategy of the final samples (scored on the whole held-out split)
STATE_NAME = OneShot.owned_files[0]
PHASES = ("weights", "controller", "derive", "done")


class OneShotSearch(SearchSession):
    """Runs the weight-sharing search of ``cfg`` into ``output_dir`` (resuming from it when it holds a
    checkpoint). ``data`` replaces ``cfg.DATA`` (tests); ``max_units_this_run`` stops after that many
    supernet steps + controller updates + final scores in this run (tests of resuming; 0: no limit)."""

    checkpoint_files = OneShot.owned_files

    def __init__(self, cfg: CfgNode, output_dir: str | Path | None = None, progress: bool = True,
                 fresh: bool = False, data: ChildData | None = None, max_units_this_run: int = 0):
        super().__init__(cfg, output_dir, fresh)
        strategies = list(resolve_strategies(cfg.SEARCH.STRATEGY).values())
        if len(strategies) != 1 or not strategies[0].weight_sharing:
            raise ValueError(f"SEARCH.STRATEGY={cfg.SEARCH.STRATEGY!r}: the weight-sharing search runs alone; "
                             f"set it to '{OneShot.name}' (other strategies cannot be combined with it)")
        self.strategy_class = strategies[0]
        check_cfg(cfg)
        OneShot.check_config(cfg)
        self.progress, self.max_units = progress, max_units_this_run
        self.units_this_run = 0
        self._data = data
        dev = str(cfg.ONESHOT.DEVICE)
        if dev.startswith("cuda"):
            require_cuda("ONESHOT.DEVICE", dev)  # one line saying why (torch's build, the driver)
        info = init_distributed("cpu" if dev == "cpu" else "auto", key="ONESHOT.DEVICE")  # torchrun's group
        self.rank, self.world = info.rank, info.world_size
        self.device = info.device if dev in ("auto", "cpu") or self.world > 1 else torch.device(dev)
        if self.world > 1 and cfg.ONESHOT.BATCH_SIZE % self.world:
            raise ValueError(f"ONESHOT.BATCH_SIZE={cfg.ONESHOT.BATCH_SIZE}: expected a multiple of the "
                             f"{self.world} processes (each trains on an equal share)")
        self.model: torch.nn.Module | None = None  # the supernet, wrapped in DDP when distributed

    # ---- set-up ------------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        data = self._data if self._data is not None else load_search_data(cfg)
        self.trainer = SupernetTrainer(cfg, data, self.device, int(cfg.SEARCH.SEED),
                                       recalibration=int(cfg.ONESHOT.BN_RECALIBRATION_BATCHES),
                                       rank=self.rank, world=self.world)
        self.x_val, self.y_val = self.trainer.x_val, self.trainer.y_val
        self.weight_steps = self.trainer.steps_per_epoch
        self.supernet = self.trainer.new_supernet()  # (torch's generator seeded with SEARCH.SEED first)
        self.strategy = self.strategy_class(cfg)  # the controller (ONESHOT.POLICY trains it)
        self.w_opt = self.trainer.optimizer(self.supernet)
        self.gen = self.trainer.gen  # every random choice of the search
        self.objective = Objective(cfg)
        self.objective.prepare(self.progress)
        self.pos = {"epoch": 0, "phase": "weights", "step": 0}

    def restore(self) -> bool:
        """Build the supernet, controller and data and load the output directory's checkpoint (for
        evaluating a finished search, e.g. bench/oneshot_eval.py); False when there is none."""
        self._build()
        loaded = self._load()
        self.model = self.supernet
        return loaded

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _save(self) -> None:
        if self.rank != 0:
            return
        atomic_torch_save({"position": dict(self.pos), "supernet": self.supernet.state_dict(),
                           "w_opt": self.w_opt.state_dict(), **self.strategy.state_dict(),
                           "gen": self.gen.get_state(), "rng": capture_rng_state()},
                          self.out / STATE_NAME)

    def _load(self) -> bool:
        try:
            state = load_state(self.out / STATE_NAME)
        except ValueError:  # load_state's advice (replay the journal) is the regular search's, not ours
            raise ValueError(f"{self.out / STATE_NAME} cannot be read (a foreign or damaged file); delete it to "
                             "restart the one-shot search from its beginning (the journal's cells are reused), "
                             "or rerun with --fresh") from None
        if state is None:
            return False
        self.pos = dict(state["position"])
        self.supernet.load_state_dict(state["supernet"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.strategy.load_state_dict(state)
        self.gen.set_state(state["gen"])
        if "rng" in state:
            restore_rng_state(state["rng"])
        else:  # a state file from before the engine's RNG capture: torch's generators only
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        return True

    def controller_epochs_before(self, epoch: int) -> int:
        """Epochs with a controller phase before ``epoch`` (the warm-up epochs have none)."""
        return max(0, epoch - self.cfg.ONESHOT.WARMUP_EPOCHS)

    def _units_done(self) -> int:
        o, p = self.cfg.ONESHOT, self.pos
        done = p["epoch"] * self.weight_steps + self.controller_epochs_before(p["epoch"]) * o.CONTROLLER_STEPS
        if p["phase"] == "weights":
            done += p["step"]
        elif p["phase"] == "controller":
            done += self.weight_steps + p["step"]
        else:
            done = o.EPOCHS * self.weight_steps + self.controller_epochs_before(o.EPOCHS) * o.CONTROLLER_STEPS
            done += o.FINAL_SAMPLES if p["phase"] == "done" else 0
        return done

    def _tick(self, bar: tqdm) -> None:
        bar.update(1)
        self.units_this_run += 1

    def _should_stop(self) -> bool:
        return 0 < self.max_units <= self.units_this_run

    # ---- the two phases ----------------------------------------------------------------------------------
    def sample_genotypes(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list]:
        actions, logp = self.strategy.sample(n, self.gen)
        return actions, logp, [self.trainer.space.genotype(a) for a in actions.tolist()]

    def weight_step(self) -> float:
        """One supernet SGD step on one sampled cell; returns the loss."""
        o = self.cfg.ONESHOT
        if self.pos["epoch"] < o.WARMUP_EPOCHS:  # SPOS warm-up: uniform paths (FairNAS: 13 fair ones)
            genotypes = [self.trainer.space.genotype(a) for a in self.trainer.draw_paths(o.FAIRNESS).tolist()]
        else:
            _, _, genotypes = self.sample_genotypes(1)
        done = self.pos["epoch"] * self.weight_steps + self.pos["step"]
        return self.trainer.update(self.supernet, self.w_opt, genotypes, done, model=self.model)

    def score(self, genotype, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy of ``genotype`` with the shared weights: batch-statistics BN, as ENAS, or with
        ``ONESHOT.BN_RECALIBRATION_BATCHES`` > 0 running statistics recomputed for this cell first."""
        return self.trainer.score(self.supernet, genotype, x, y)

    def _score_rows(self, journal: Journal | None, strategy: str, batch: int, actions: torch.Tensor,
                    logp: torch.Tensor | None, genotypes: list, minibatch: int | None, policy: int) -> list[float]:
        """Score the sampled cells (recording them in the journal first, or completing an interrupted batch:
        its finished cells keep their journaled reward). ``policy``: the controller updates so far. Without a
        journal (ranks > 0) nothing is recorded and rank 0's rewards are returned."""
        # Batch b of n cells holds the strategy's samples b*n .. b*n+n-1 (they finish in order, so the journal
        # files them under update batch b too).
        n, first = len(genotypes), batch * len(genotypes)
        rows = journal.samples(strategy, first, n) if journal is not None else [None] * n
        if journal is None:
            pass
        elif not rows:
            lps = logp.tolist() if logp is not None else [None] * n
            rows = journal.add_pending(strategy, first, policy, [(a, g.to_dict(), lp) for a, g, lp
                                                                in zip(actions.tolist(), genotypes, lps)])
        elif [r.decisions for r in rows] != actions.tolist():
            raise ValueError(f"{journal.path}: batch {batch} of {strategy} holds other cells than this run "
                             "samples; the checkpoint and the journal disagree (start over with --fresh)")
        rewards = []
        for row, genotype in zip(rows, genotypes):
            t0 = time.perf_counter()
            if minibatch is None:
                x, y = self.x_val, self.y_val
            else:
                idx = torch.randperm(len(self.x_val), generator=self.gen)[:minibatch].to(self.device)
                x, y = self.x_val[idx], self.y_val[idx]
            if row is not None and row.status == "ok":  # scored before the interruption: the journal's reward
                rewards.append(float(row.reward))     # is the one the uninterrupted run used (GPUs may not
                continue                              # reproduce it bit for bit)
            # The objective makes the supernet's accuracy the reward (and profiles the cell), as the workers do
            # for trained children (search/objective.py).
            scored = self.objective.apply({"reward": self.score(genotype, x, y)}, genotype)
            reward = float(scored["reward"])
            rewards.append(reward)
            if row is not None and row.status == "pending":
                params = _child_params(genotype, self.cfg) if strategy == DERIVE_NAME else None
                journal.finish(row.id, "ok", reward, time.perf_counter() - t0, params, batch_size=n,
                               costs={k: scored.get(k) for k in COST_FIELDS})
        if self.world > 1:  # every process updates its controller copy with the same (rank 0's) rewards
            t = torch.tensor(rewards, dtype=torch.float64, device=self.device)
            dist.broadcast(t, 0)
            rewards = t.tolist()
        return rewards

    def controller_step(self, journal: Journal | None) -> dict[str, float]:
        """Sample SEARCH.BATCH_SIZE cells, score each on a held-out minibatch, update the policy."""
        o = self.cfg.ONESHOT
        batch = self.controller_epochs_before(self.pos["epoch"]) * o.CONTROLLER_STEPS + self.pos["step"]
        actions, logp, genotypes = self.sample_genotypes(self.cfg.SEARCH.BATCH_SIZE)
        rewards = self._score_rows(journal, SEARCH_NAME, batch, actions, logp, genotypes, o.REWARD_BATCH_SIZE,
                                   policy=batch)
        stats = self.strategy.update(actions, logp, torch.tensor(rewards))
        stats["reward"] = sum(rewards) / len(rewards)
        return stats

    # ---- main loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._t_start = time.perf_counter()
        return self._run_follower() if self.rank != 0 else super().run()

    def search(self, journal: Journal) -> dict[str, Any]:
        """Rank 0, in the session frame (lock, journal, summary.json)."""
        self._build()
        barrier()  # the other processes read the checkpoint after the fresh start removed it
        resumed = self.restore_position()
        stopped = self._loop(journal, resumed)
        summary = self._write_outputs(journal)
        barrier()
        summary["stopped_early"] = stopped
        summary["units_this_run"] = self.units_this_run
        summary["wall_seconds_this_run"] = time.perf_counter() - self._t_start
        return summary

    def restore_position(self) -> bool:
        """Load the checkpoint (if any) and wrap the supernet for DDP when distributed."""
        resumed = self._load()
        self.model = self.supernet
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Every process runs the same path, so the unused ops are unused everywhere; DDP must still be
            # told that some parameters get no gradient.
            self.model = DistributedDataParallel(
                self.supernet, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        return resumed

    def _run_follower(self) -> dict[str, Any]:
        """Ranks > 0: the same loop without the journal and without writing anything."""
        self._build()
        barrier()
        resumed = self.restore_position()
        stopped = self._loop(None, resumed)
        barrier()
        return {"output_dir": str(self.out), "strategies": {}, "best": None, "stopped_early": stopped,
                "rank": self.rank}

    def _loop(self, journal: Journal | None, resumed: bool) -> bool:
        o, p = self.cfg.ONESHOT, self.pos
        total = (o.EPOCHS * self.weight_steps + self.controller_epochs_before(o.EPOCHS) * o.CONTROLLER_STEPS
                 + o.FINAL_SAMPLES)
        bar = tqdm(total=total, initial=self._units_done(), desc="search[oneshot]",
                   disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        if resumed:
            log.info("resuming the one-shot search at %s", p)
        try:
            while p["phase"] in ("weights", "controller"):
                if p["phase"] == "weights":
                    while p["step"] < self.weight_steps:
                        if self._should_stop():
                            return True
                        loss = self.weight_step()
                        p["step"] += 1
                        self._tick(bar)
                        bar.set_postfix(epoch=p["epoch"], loss=f"{loss:.3f}")
                        if p["step"] % o.CHECKPOINT_EVERY == 0 and p["step"] < self.weight_steps:
                            self._save()
                    p.update(phase="controller", step=0)
                    self._save()
                if p["epoch"] < o.WARMUP_EPOCHS:  # no controller phase in the warm-up
                    p["step"] = o.CONTROLLER_STEPS
                while p["step"] < o.CONTROLLER_STEPS:
                    if self._should_stop():
                        return True
                    stats = self.controller_step(journal)
                    p["step"] += 1
                    self._tick(bar)
                    bar.set_postfix(epoch=p["epoch"], reward=f"{stats['reward']:.3f}")
                    self._save()
                p.update(epoch=p["epoch"] + 1, step=0, phase="weights" if p["epoch"] + 1 < o.EPOCHS else "derive")
                self._save()
            if p["phase"] == "derive":
                if self._should_stop():
                    return True
                actions, _, genotypes = self.sample_genotypes(o.FINAL_SAMPLES)
                self._score_rows(journal, DERIVE_NAME, 0, actions, None, genotypes, None,
                                 policy=self.controller_epochs_before(o.EPOCHS) * o.CONTROLLER_STEPS)
                for _ in genotypes:
                    self._tick(bar)
                p.update(phase="done", step=0)
                self._save()
            return False
        finally:
            bar.close()

    def _write_outputs(self, journal: Journal) -> dict[str, Any]:
        # best_genotype.json / top_k.json come from the final samples only: they are scored on the whole
        # held-out split, the controller-phase scores on one minibatch each (a max over those is mostly noise).
        summary = write_outputs(journal, self.out, self.cfg, [DERIVE_NAME])
        # A controller that collapsed onto one cell is reported as in the regular search.
        summary["strategies"][SEARCH_NAME] = strategy_summary(journal.all(SEARCH_NAME), self.strategy.learns)
        summary["problems"] = problems_of(summary)
        summary["reward_plot"] = str(plot_rewards({SEARCH_NAME: journal.all(SEARCH_NAME),
                                                   DERIVE_NAME: journal.all(DERIVE_NAME)}, self.out / "rewards.png"))
        summary["oneshot"] = {"position": dict(self.pos), "weight_steps_per_epoch": self.weight_steps,
                              "policy": str(self.cfg.ONESHOT.POLICY), "device": str(self.device),
                              "supernet_params": sum(q.numel() for q in self.supernet.parameters())}
        return summary


def _child_params(genotype, cfg: CfgNode) -> int | None:
    """Parameters of the stand-alone child network of ``genotype`` (``MODEL.NASNET``, for top_k.json)."""
    try:
        model = build_child(genotype, cfg.MODEL.NASNET)
    except ValueError:
        return None
    return sum(q.numel() for q in model.parameters())
