"""The search loop, an asynchronous work queue: whenever a worker frees, the strategy with the fewest
children in flight samples its next child (journaled as pending first) and submits it, so every worker
stays busy and the strategies of one search (``ppo,random``) share the workers and run concurrently.
Each strategy's policy is updated every ``SEARCH.BATCH_SIZE`` finished children, from the log-probabilities
recorded when they were sampled (PPO's ratio accounts for children sampled by an older policy), and its
controller checkpointed. Rerunning with the same output directory resumes where it stopped: the journal
says which updates were due (any missing from the checkpoint are replayed) and which children were in
flight (re-submitted with the same genotypes).

It is the one engine of every strategy, weight sharing included (``oneshot``, as a ``Strategy`` over one
execution engine in NNI): a strategy may propose whole batches (:meth:`Strategy.propose`), have its own budget,
update batches and final candidates (journaled under their own name; the best cells then come from them only),
keep its own checkpoint (:attr:`Strategy.own_checkpoint`), and supply an evaluator of its own, run in this process
by the inline backend (the supernet is not sent to workers)."""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from fvcore.common.config import CfgNode
from tqdm import tqdm

from nasnet_det.engine.distributed import barrier
from nasnet_det.engine.ray_env import check_ray_address
from search.config import check_cfg
from search.journal import Evaluation, Journal, load_state, save_state
from search.objective import with_objective
from search.outputs import problems_of, strategy_summary, write_outputs
from search.plots import plot_rewards
from search.session import run_in_output_dir
from search.strategies import STRATEGIES, Strategy, resolve_strategies
from search.workers import COST_FIELDS, Evaluator, InlineBackend, Job, QueueBackend, Result, make_backend

if TYPE_CHECKING:
    from search.reward import ChildData

log = logging.getLogger(__name__)


def _sample_seed(seed: int, strategy: str, sample: int) -> int:
    # A fresh generator per child, derived from (seed, strategy, sample index): a resumed run samples with
    # the same random numbers an uninterrupted run would, whenever the checkpoint was written.
    return (seed * 1_000_003 + zlib.crc32(strategy.encode()) * 7919 + sample) % (2**63)


@dataclass
class StrategyState:
    name: str
    strategy: Strategy
    checkpoint: Path
    budget: int = 0                 # children it proposes in the whole search
    step: int = 0                   # policy updates applied
    sampled: int = 0                # children journaled
    finished: int = 0               # of those, finished (ok, failed or lost)
    in_flight: int = 0
    best: float = math.nan


@dataclass
class QueueStats:
    """How busy the workers were in this run (``summary.json["queue"]``)."""

    workers: int = 0                 # most workers the backend had
    max_in_flight: int = 0           # most children in flight (workers + prefetched)
    busy_seconds: float = 0.0        # summed evaluation time of the children that finished
    wall_seconds: float = 0.0        # first submission to last result
    wait_seconds: float = 0.0        # of that, the driver waiting for results (the rest: sampling, journal, updates)
    updates: int = 0
    # children in flight at each policy update: > 0 means the other workers went on meanwhile
    in_flight_at_updates: list[int] = field(default_factory=list)
    # fills that left a worker idle although children were left to sample (the queue's contract: none)
    idle_fills: int = 0

    def summary(self) -> dict[str, Any]:
        busy = self.busy_seconds / (self.workers * self.wall_seconds) if self.workers and self.wall_seconds else None
        return {"workers": self.workers, "max_in_flight": self.max_in_flight, "utilisation": busy,
                "busy_seconds": self.busy_seconds, "wall_seconds": self.wall_seconds,
                "driver_seconds": self.wall_seconds - self.wait_seconds, "policy_updates": self.updates,
                "updates_while_children_ran": sum(n > 0 for n in self.in_flight_at_updates),
                "idle_fills": self.idle_fills}


class SearchRunner:
    """Runs every strategy of ``cfg`` into ``output_dir``. ``evaluator`` replaces child training (tests,
    synthetic rewards); by default one is built from ``cfg.DATA`` and ``cfg.CHILD``. ``backend`` replaces
    the one ``cfg.WORKERS`` describes (the caller closes it). ``fresh`` deletes the output directory's
    journal and controller checkpoints first (once the directory's lock is held)."""

    def __init__(self, cfg: CfgNode, output_dir: str | Path | None = None, evaluator: Evaluator | None = None,
                 progress: bool = True, fresh: bool = False, backend: QueueBackend | None = None,
                 data: ChildData | None = None):
        self.cfg, self.out, self.fresh = cfg, Path(output_dir or cfg.OUTPUT_DIR), fresh
        self.strategy_classes = resolve_strategies(cfg.SEARCH.STRATEGY)
        self.strategies = list(self.strategy_classes)
        check_cfg(cfg)
        self.data = data  # replaces cfg.DATA for the strategies that score their own children (tests)
        self.evaluator, self.progress = evaluator, progress
        self.backend, self.owns_backend = backend, backend is None
        self.evals_this_run = 0
        self.stats = QueueStats()
        self.states: dict[str, StrategyState] = {}

    @property
    def checkpoint_files(self) -> tuple[str, ...]:
        """The controller checkpoints and the files every registered strategy owns: the journal may hold
        children of strategies this run does not choose (a search resumes with others), and a fresh start
        must not leave their files behind."""
        return ("controller_*.pth", *(p for cls in STRATEGIES.values() for p in cls.owned_files))

    def run(self) -> dict[str, Any]:
        """Run (or resume) the search in its output folder (:func:`search.session.run_in_output_dir`) and
        return the summary; a follower of a distributed weight-sharing search follows rank 0 instead."""
        follower = next((name for name, cls in self.strategy_classes.items() if cls.follows()), None)
        if follower is not None:  # (a strategy that can be followed runs alone: the weight-sharing search)
            return self._follow(follower)
        return run_in_output_dir(self.cfg, self.out, self.fresh, self.checkpoint_files, self.search)

    def _follow(self, name: str) -> dict[str, Any]:
        """A process that follows another's run of the strategy (ranks > 0 of a distributed weight-sharing
        search): the strategy's steps without the journal, writing nothing."""
        strategy = self._new_strategy(name)
        self.states = {name: StrategyState(name, strategy, self.out / f"controller_{name}.pth")}
        strategy.follow(self.out)
        barrier()
        # rank 0's summary says how the search went; a follower's says only that it followed to the end
        return {"output_dir": str(self.out), "strategies": {}, "best": None, "stopped_early": False,
                "rank": int(os.environ.get("RANK", "0")), "problems": [], "usable": True}

    # ---- set-up ------------------------------------------------------------------------------------------
    def _new_strategy(self, name: str) -> Strategy:
        return self.strategy_classes[name].build(self.cfg, data=self.data, progress=self.progress)

    def _get_backend(self) -> QueueBackend:
        own = next((e for st in self.states.values() if (e := st.strategy.evaluator()) is not None), None)
        if self.backend is None and own is not None:
            # Scored in this process (the supernet is not sent to workers); the strategy applies the objective.
            self.backend, self.owns_backend = InlineBackend(own), True
        if self.backend is None:
            w = self.cfg.WORKERS
            if w.BACKEND == "ray":  # a cluster address nothing answers: say so before the data is loaded
                check_ray_address(w.RAY_ADDRESS, "WORKERS.RAY_ADDRESS")
            evaluator = self.evaluator if self.evaluator is not None else build_child_evaluator(self.cfg)
            # The objective turns each child's accuracy into its reward, in the worker (every strategy here)
            evaluator = with_objective(evaluator, self.cfg, self.progress)
            self.backend = make_backend(w.BACKEND, evaluator, w.NUM_WORKERS, w.RAY_ADDRESS, w.MAX_RETRIES,
                                        w.THREADS_PER_WORKER, w.MAX_IN_FLIGHT)
        return self.backend

    def _open_strategy(self, journal: Journal, name: str) -> StrategyState:
        s = self.cfg.SEARCH
        # Each strategy starts from torch's generator seeded alike (a controller's initial weights), whichever
        # strategies run beside it.
        torch.manual_seed(s.SEED)
        strategy = self._new_strategy(name)
        st = StrategyState(name, strategy, self.out / f"controller_{name}.pth", budget=strategy.budget(self.cfg))
        names = strategy.journal_names or (name,)
        rows = [r for n in names for r in journal.all(n)]
        st.sampled = len(rows)
        st.finished = sum(r.status != "pending" for r in rows)
        st.best = max((e.reward for e in rows if e.status == "ok"), default=math.nan)
        if strategy.own_checkpoint:
            strategy.attach(self.out, rows)
            st.step = strategy.updates_done()
            self._apply_due_updates(journal, st)  # (the strategy regenerates each replayed batch)
            return st
        try:
            state = load_state(st.checkpoint)
        except ValueError as e:  # the journal holds everything the checkpoint does: rebuild from it
            log.warning("%s; rebuilding it from the journal", e)
            state = None
        if state is not None and int(state["step"]) <= strategy.updates_due(st.finished):
            st.step = int(state["step"])
            st.strategy.load_state_dict(state)
        elif state is not None:
            log.warning("%s is ahead of the journal; rebuilding the controller from the journal", st.checkpoint)
        self._apply_due_updates(journal, st)  # those a kill left out of the checkpoint (deterministic replay)
        st.strategy.attach(self.out, rows)
        return st

    # ---- policy ------------------------------------------------------------------------------------------
    def _apply_due_updates(self, journal: Journal, st: StrategyState) -> None:
        while st.step < st.strategy.updates_due(st.finished):
            name, batch = st.strategy.update_batch(st.name, st.step)
            used = policy_rewards(journal.batch(name, batch), self.cfg.CONTROLLER.FAILED_REWARD)
            if used:
                logprobs = [r.logprob for r, _ in used]
                stats = st.strategy.update(torch.tensor([r.decisions for r, _ in used]),
                                           None if None in logprobs else torch.tensor(logprobs),
                                           torch.tensor([reward for _, reward in used]))
                log.debug("%s update %d: %s", st.name, st.step, stats)
            st.step += 1
            if st.strategy.own_checkpoint:  # (its update wrote it)
                continue
            # (a strategy's state beside the step; the controller strategies' keys are "controller", "trainer")
            save_state(st.checkpoint, {"step": st.step, "strategy": st.name, **st.strategy.state_dict()})

    def _sample(self, journal: Journal, st: StrategyState, n: int) -> list[Evaluation]:
        """``n`` new children of one strategy, sampled together (one pass of the controller)."""
        gen = torch.Generator().manual_seed(_sample_seed(self.cfg.SEARCH.SEED, st.name, st.sampled))
        proposal = st.strategy.propose(n, gen, st.sampled, st.step)
        if proposal is None:
            return []
        actions = proposal.decisions.tolist()
        logprobs = proposal.logprobs.tolist() if proposal.logprobs is not None else [None] * len(actions)
        children = journal.add_pending(proposal.name or st.name, proposal.first, proposal.policy, [
            (a, st.strategy.space.genotype(a).to_dict(), lp) for a, lp in zip(actions, logprobs)])
        st.sampled += len(actions)
        return children

    def _next_children(self, journal: Journal, states: dict[str, StrategyState], resubmit: deque[Evaluation],
                       free: int) -> list[Evaluation]:
        """Up to ``free`` children: those in flight when the last run stopped first (same genotypes), then
        new samples, each going to the strategy with the fewest children in flight (ties: fewest sampled)."""
        out = [resubmit.popleft() for _ in range(min(free, len(resubmit)))]
        owner = _journal_owners(states)
        load = {name: st.in_flight + sum(owner[c.strategy] is st for c in out) for name, st in states.items()}
        sampled = {name: st.sampled for name, st in states.items()}
        want = dict.fromkeys(states, 0)
        for _ in range(free - len(out)):
            open_ = [name for name in states if sampled[name] < states[name].budget]
            if not open_:
                break
            name = min(open_, key=lambda k: (load[k], sampled[k]))
            want[name], load[name], sampled[name] = want[name] + 1, load[name] + 1, sampled[name] + 1
        for name, n in want.items():
            if n:
                out += self._sample(journal, states[name], n)
        return out

    # ---- main loop ---------------------------------------------------------------------------------------
    def search(self, journal: Journal) -> dict[str, Any]:
        """Run (or resume) every strategy in ``journal``, write the outputs and return the summary."""
        try:
            self.states = states = {name: self._open_strategy(journal, name) for name in self.strategies}
            stopped = self._run_queue(journal, states)
        finally:
            if self.backend is not None and self.owns_backend:
                self.backend.close()
                self.backend = None
        final = [n for st in states.values() for n in st.strategy.final_names]
        if final:
            summary = self._final_outputs(journal, final)
        else:
            learned = [name for name, st in states.items() if st.strategy.learns]
            summary = write_outputs(journal, self.out, self.cfg, self.strategies, learned)
        barrier()  # (a distributed search's other processes wait for the outputs)
        summary["stopped_early"] = stopped
        summary["evaluations_this_run"] = self.evals_this_run
        summary["queue"] = self.stats.summary()
        return summary

    def _final_outputs(self, journal: Journal, final: list[str]) -> dict[str, Any]:
        """The outputs of strategies with final candidates: the best cells come from those; the strategies'
        other children are summarised (a controller that collapsed onto one cell is reported)."""
        summary = write_outputs(journal, self.out, self.cfg, final)
        for name, st in self.states.items():
            summary["strategies"][name] = strategy_summary(journal.all(name), st.strategy.learns)
        summary["problems"] = problems_of(summary)
        summary["reward_plot"] = str(plot_rewards({n: journal.all(n) for st in self.states.values()
                                                   for n in st.strategy.journal_names or (st.name,)},
                                                  self.out / "rewards.png"))
        for name, st in self.states.items():
            if (own := st.strategy.summary()) is not None:
                summary[name] = own
        return summary

    def _run_queue(self, journal: Journal, states: dict[str, StrategyState]) -> bool:
        """Keep every worker busy until the budgets are spent; True when SEARCH.MAX_EVALS_THIS_RUN stopped it."""
        s = self.cfg.SEARCH
        limit = s.MAX_EVALS_THIS_RUN
        owner = _journal_owners(states)
        resubmit = deque(e for e in journal.pending() if e.strategy in owner)
        in_flight: dict[int, StrategyState] = {}
        total = sum(st.budget for st in states.values())
        bar = tqdm(total=total, initial=min(sum(st.finished for st in states.values()), total),
                   desc=f"search[{','.join(states)}]", disable=not self.progress, dynamic_ncols=True)
        t0 = None
        try:
            while True:
                work_left = resubmit or any(st.sampled < st.budget for st in states.values())
                if in_flight or work_left:
                    # Before sampling: a child is sampled by the policy that has every update due for the
                    # children finished so far, as a resumed run's first child is. (A worker that freed
                    # meanwhile already started the child queued for it, so it does not wait for this.)
                    for st in states.values():
                        n = st.step
                        self._apply_due_updates(journal, st)
                        self.stats.in_flight_at_updates += [len(in_flight)] * (st.step - n)
                        self.stats.updates += st.step - n
                if self.backend is None and work_left:
                    self._get_backend()  # built once there is work (loads the data)
                free = self.backend.capacity() - len(in_flight) if self.backend is not None else 0
                if limit:
                    free = min(free, limit - self.evals_this_run - len(in_flight))
                for child in self._next_children(journal, states, resubmit, max(0, free)):
                    self.backend.submit(Job(child.id, child.genotype, s.SEED * 100_003 + child.id))
                    st = in_flight[child.id] = owner[child.strategy]
                    st.in_flight += 1
                    t0 = time.perf_counter() if t0 is None else t0
                if not in_flight:
                    break
                self._observe_fill(states, resubmit, len(in_flight), limit)
                t_wait = time.perf_counter()
                results = self.backend.wait()
                self.stats.wait_seconds += time.perf_counter() - t_wait
                for res in results:
                    self._finish(journal, in_flight.pop(res.eval_id), res, bar)
                self.stats.wall_seconds = time.perf_counter() - t0
        finally:
            bar.close()
        left = bool(journal.pending()) or any(st.sampled < st.budget for st in states.values())
        for st in states.values():
            self._apply_due_updates(journal, st)
        return bool(limit) and self.evals_this_run >= limit and left

    def _observe_fill(self, states: dict[str, StrategyState], resubmit: deque, n: int, limit: int) -> None:
        cap = self.backend.capacity()
        self.stats.workers = max(self.stats.workers, self.backend.worker_count())
        self.stats.max_in_flight = max(self.stats.max_in_flight, n)
        work_left = resubmit or any(st.sampled < st.budget for st in states.values())
        if n < cap and work_left and not (limit and self.evals_this_run + n >= limit):
            self.stats.idle_fills += 1

    def _finish(self, journal: Journal, st: StrategyState, res: Result, bar: tqdm) -> None:
        row = journal.get(res.eval_id)
        journal.finish(res.eval_id, res.status, res.reward, res.seconds, res.params, res.error,
                       batch_size=st.strategy.batch_size_of(row.strategy),
                       costs={k: getattr(res, k) for k in COST_FIELDS})
        st.finished += 1
        st.in_flight -= 1
        self.evals_this_run += 1
        self.stats.busy_seconds += res.seconds or 0.0
        if res.status == "ok":
            st.best = res.reward if math.isnan(st.best) else max(st.best, res.reward)
        else:
            tqdm.write(f"[{st.name}] child {res.eval_id} {res.status}: {res.error}")
        bar.update(1)
        bar.set_postfix_str(" ".join(f"{name}={x.best:.4f}" for name, x in self.states.items()))


def _journal_owners(states: dict[str, StrategyState]) -> dict[str, StrategyState]:
    """The strategy whose children each journal strategy name files."""
    return {n: st for st in states.values() for n in st.strategy.journal_names or (st.name,)}


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
