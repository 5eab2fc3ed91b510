"""The search loop: sample a batch -> journal it as pending -> evaluate in parallel -> journal results ->
update the policy -> checkpoint. Rerunning with the same output directory resumes where it stopped."""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode
from tqdm import tqdm

from search.config import check_cfg, identity_of, upgrade_identity
from search.controller import Controller, decisions_to_genotype, sample_uniform
from search.journal import Evaluation, Journal, load_state, save_state
from search.policy import PolicyTrainer
from search.workers import Evaluator, Job, make_backend

log = logging.getLogger(__name__)
STRATEGIES = ("ppo", "reinforce", "random")
JOURNAL_NAME = "journal.sqlite"
LOCK_NAME = "journal.lock"


class StopSearch(Exception):
    """Raised internally when SEARCH.MAX_EVALS_THIS_RUN evaluations have finished in this run."""


def parse_strategies(spec: str) -> list[str]:
    names = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if not names or bad:
        raise ValueError(f"SEARCH.STRATEGY={spec!r}: expected one or more of {', '.join(STRATEGIES)} "
                         "separated by commas (e.g. 'ppo,random')")
    return list(dict.fromkeys(names))


def _batch_seed(seed: int, strategy: str, batch: int) -> int:
    # A fresh generator per batch, derived from (seed, strategy, batch): a resumed run samples exactly
    # what an uninterrupted run would, without depending on when the checkpoint was written.
    return (seed * 1_000_003 + zlib.crc32(strategy.encode()) * 7919 + batch) % (2**63)


class SearchRunner:
    """Runs every strategy of ``cfg`` into ``output_dir``. ``evaluator`` replaces child training (tests,
    synthetic rewards); by default one is built from ``cfg.DATA`` and ``cfg.CHILD``. ``fresh`` deletes the
    output directory's journal and controller checkpoints first (once the directory's lock is held)."""

    def __init__(self, cfg: CfgNode, output_dir: str | Path | None = None, evaluator: Evaluator | None = None,
                 progress: bool = True, fresh: bool = False):
        self.cfg = cfg
        self.out = Path(output_dir or cfg.OUTPUT_DIR)
        self.strategies = parse_strategies(cfg.SEARCH.STRATEGY)
        check_cfg(cfg)
        self.evaluator, self.progress, self.fresh = evaluator, progress, fresh
        self.backend = None
        self.evals_this_run = 0

    # ---- set-up ------------------------------------------------------------------------------------------
    def _open_journal(self) -> Journal:
        journal = Journal(self.out / JOURNAL_NAME)
        ident = json.loads(json.dumps(identity_of(self.cfg)))
        old = journal.get_meta("identity")
        if old is not None:  # perhaps written by an older version: compare in today's form
            old = upgrade_identity(old)
        if old is None or old == ident:
            journal.set_meta("identity", ident)
        else:
            diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
            journal.close()
            raise ValueError(f"{self.out / JOURNAL_NAME} was written with different settings ({', '.join(diff)}); "
                             "resume with the original config, choose a new OUTPUT_DIR, or start over with --fresh")
        journal.set_meta("config", self.cfg.dump())
        return journal

    def _get_backend(self):
        if self.backend is None:
            evaluator = self.evaluator if self.evaluator is not None else build_child_evaluator(self.cfg)
            w = self.cfg.WORKERS
            self.backend = make_backend(w.BACKEND, evaluator, w.NUM_WORKERS, w.RAY_ADDRESS, w.MAX_RETRIES,
                                        w.THREADS_PER_WORKER)
        return self.backend

    # ---- main loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        with output_dir_lock(self.out):
            if self.fresh:  # the old run's journal, checkpoints and every output write_outputs makes
                for f in [*(self.out / (JOURNAL_NAME + sfx) for sfx in ("", "-wal", "-shm")),
                          *self.out.glob("controller_*.pth"), *self.out.glob("best_genotype*.json"),
                          *(self.out / n for n in ("top_k.json", "summary.json", "rewards.png", "best_cells.png"))]:
                    f.unlink(missing_ok=True)
            journal = self._open_journal()
            stopped = False
            try:
                for strategy in self.strategies:
                    self._run_strategy(journal, strategy)
            except StopSearch:
                stopped = True
            finally:
                if self.backend is not None:
                    self.backend.close()
                    self.backend = None
            from search.outputs import write_outputs

            summary = write_outputs(journal, self.out, self.cfg, self.strategies)
            summary["stopped_early"] = stopped
            summary["evaluations_this_run"] = self.evals_this_run
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            journal.close()
        return summary

    def _run_strategy(self, journal: Journal, strategy: str) -> None:
        s, c = self.cfg.SEARCH, self.cfg.CONTROLLER
        ckpt = self.out / f"controller_{strategy}.pth"
        controller = trainer = None
        if strategy != "random":
            torch.manual_seed(s.SEED)
            controller = Controller(s.NUM_BLOCKS, c.HIDDEN, c.INIT_RANGE)
            trainer = PolicyTrainer(controller, strategy, c.LR, c.ENTROPY_WEIGHT, c.BASELINE_DECAY, c.PPO_EPOCHS,
                                    c.PPO_CLIP, c.GRAD_CLIP, c.NORMALIZE_ADVANTAGE)
        step = 0
        state = load_state(ckpt)
        if state is not None:
            step = int(state["step"])
            if controller is not None:
                controller.load_state_dict(state["controller"])
                trainer.load_state_dict(state["trainer"])
            torch.set_rng_state(state["torch_rng"])
        done = journal.count(strategy) - journal.count(strategy, "pending")
        bar = tqdm(total=s.BUDGET, initial=min(done, s.BUDGET), desc=f"search[{strategy}]",
                   disable=not self.progress, dynamic_ncols=True)
        best = max((e.reward for e in journal.all(strategy) if e.status == "ok"), default=float("nan"))
        bar.set_postfix(best=f"{best:.4f}")
        try:
            while True:
                rows = journal.batch(strategy, step)
                if not rows:
                    sampled = journal.count(strategy)
                    if sampled >= s.BUDGET:
                        break
                    rows = self._sample(journal, strategy, step, min(s.BATCH_SIZE, s.BUDGET - sampled), controller)
                pending = [r for r in rows if r.status == "pending"]
                if pending:
                    best = self._evaluate(journal, strategy, pending, bar, best)
                rows = journal.batch(strategy, step)
                used = policy_rewards(rows, c.FAILED_REWARD)
                if trainer is not None and used:
                    stats = trainer.update(torch.tensor([r.decisions for r, _ in used]),
                                           torch.tensor([r.logprob for r, _ in used]),
                                           torch.tensor([reward for _, reward in used]))
                    log.debug("%s batch %d: %s", strategy, step, stats)
                step += 1
                save_state(ckpt, {"step": step, "strategy": strategy, "torch_rng": torch.get_rng_state(),
                                  "controller": controller.state_dict() if controller is not None else None,
                                  "trainer": trainer.state_dict() if trainer is not None else None})
        finally:
            bar.close()

    def _sample(self, journal: Journal, strategy: str, step: int, n: int, controller: Controller | None
                ) -> list[Evaluation]:
        nb = self.cfg.SEARCH.NUM_BLOCKS
        gen = torch.Generator().manual_seed(_batch_seed(self.cfg.SEARCH.SEED, strategy, step))
        if controller is None:
            actions, logps = sample_uniform(n, nb, gen), [None] * n
        else:
            actions, logp, _ = controller.sample(n, gen)
            logps = logp.tolist()
        samples = []
        for a, lp in zip(actions.tolist(), logps):
            samples.append((a, decisions_to_genotype(a, nb).to_dict(), lp))
        return journal.add_pending(strategy, step, samples)

    def _evaluate(self, journal: Journal, strategy: str, pending: list[Evaluation], bar: tqdm, best: float
                  ) -> float:
        limit = self.cfg.SEARCH.MAX_EVALS_THIS_RUN
        if limit > 0:
            room = limit - self.evals_this_run
            if room <= 0:
                raise StopSearch
            stop_after = len(pending) > room
            pending = pending[:room]
        else:
            stop_after = False
        jobs = [Job(e.id, e.genotype, self.cfg.SEARCH.SEED * 100_003 + e.id) for e in pending]
        for res in self._get_backend().run(jobs):
            journal.finish(res.eval_id, res.status, res.reward, res.seconds, res.params, res.error)
            self.evals_this_run += 1
            if res.status == "ok":
                best = res.reward if math.isnan(best) else max(best, res.reward)
            else:
                tqdm.write(f"[{strategy}] child {res.eval_id} failed: {res.error}")
            bar.update(1)
            bar.set_postfix(best=f"{best:.4f}")
        if stop_after:
            raise StopSearch
        return best


def build_child_evaluator(cfg: CfgNode) -> Evaluator:
    """Load the data once (here, in the driver) and wrap it with the child settings."""
    from nasnet_det.data.cifar import load_cifar_source
    from search.reward import ChildData, ChildEvaluator

    x, y = load_cifar_source(cfg.DATA.SOURCE)
    data = ChildData.from_arrays(x, y, cfg.DATA.VAL_SIZE, cfg.DATA.SPLIT_SEED, cfg.DATA.TRAIN_LIMIT)
    return ChildEvaluator(dict(cfg.CHILD), data, dict(cfg.MODEL.NASNET))


def policy_rewards(rows: list[Evaluation], failed_reward: float | None) -> list[tuple[Evaluation, float]]:
    """The (row, reward) pairs a policy update learns from: successful children with their reward, and
    failed ones with ``CONTROLLER.FAILED_REWARD`` (left out when it is None). ``lost`` children failed for
    reasons that say nothing about their cell (infrastructure) and are never used."""
    used = []
    for r in rows:
        if r.status == "ok":
            used.append((r, float(r.reward)))
        elif r.status == "failed" and failed_reward is not None:
            used.append((r, float(failed_reward)))
    return used


@contextmanager
def output_dir_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out/journal.lock`` so two searches never share an output directory
    (they would evaluate the same children twice and collide in the journal). The OS drops the lock when
    the process dies, so a killed search never leaves a stale lock behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    fh = open(out / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out} is in use by another search (lock {out / LOCK_NAME} is held); wait "
                             "for it to finish or choose another OUTPUT_DIR") from None
        yield
    finally:
        fh.close()  # releases the lock
