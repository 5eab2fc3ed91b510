"""Work queue for child evaluations: in-process, a local process pool (one worker per GPU, or N CPU
workers), or Ray (one child per GPU on a cluster, with retries).

Every backend takes a picklable *evaluator* ``fn(genotype, seed) -> {"reward": float, "params": int, ...}``
and yields one :class:`Result` per job as soon as it finishes. An evaluator that raises, runs out of
memory or returns a non-finite reward gives a ``failed`` result with the reason; the search goes on.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import nasnet_det
import search
from nasnet_det.space import Genotype

Evaluator = Callable[[Genotype, int], dict[str, Any]]


@dataclass(frozen=True)
class Job:
    eval_id: int
    genotype: dict[str, Any]
    seed: int


@dataclass
class Result:
    eval_id: int
    status: str               # "ok", "failed" (the child's fault) or "lost" (infrastructure, not the cell)
    reward: float | None = None
    seconds: float | None = None
    params: int | None = None
    error: str | None = None


def run_job(evaluator: Evaluator, job: Job) -> Result:
    """Evaluate one child, turning every failure into a ``failed`` result with a one-line reason."""
    t0 = time.perf_counter()
    try:
        out = evaluator(Genotype.from_dict(job.genotype), job.seed)
        reward = float(out["reward"])
        if not math.isfinite(reward):
            raise FloatingPointError(f"reward is {reward}")
        return Result(job.eval_id, "ok", reward, time.perf_counter() - t0, out.get("params"))
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        reason = f"out of memory: {str(e).splitlines()[0] if str(e) else 'CUDA OOM'}"
    except MemoryError:
        reason = "out of memory (host RAM)"
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        reason = f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
    return Result(job.eval_id, "failed", None, time.perf_counter() - t0, None, reason)


class InlineBackend:
    """Runs children one after the other in this process (debugging, pure-function rewards)."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        for job in jobs:
            yield run_job(self.evaluator, job)

    def close(self) -> None:
        pass


# --- local process pool ------------------------------------------------------------------------------
_WORKER_EVALUATOR: Evaluator | None = None
_WORKER_STARTED: Any = None  # SimpleQueue: each worker writes the id of a job before it runs it
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Make this process get SIGKILL when the process that started it dies (Linux ``prctl``), so workers
    of a ``kill -9``'d driver do not live on holding a GPU. Returns False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the driver died before prctl took effect
        os._exit(1)
    return True


def _init_worker(evaluator: Evaluator, devices: Any, threads: int, started: Any, parent_pid: int) -> None:
    global _WORKER_EVALUATOR, _WORKER_STARTED
    die_with_parent(parent_pid)
    torch.set_num_threads(max(1, threads))
    device = devices.get() if devices is not None else "cpu"
    if hasattr(evaluator, "device"):
        evaluator.device = device
    _WORKER_EVALUATOR, _WORKER_STARTED = evaluator, started


def _run_in_worker(job: Job) -> Result:
    assert _WORKER_EVALUATOR is not None, "worker was not initialised"
    # SimpleQueue.put writes to the pipe before returning, so the id is there even if this process is
    # killed a moment later: the driver learns which jobs were running when a worker died.
    _WORKER_STARTED.put(job.eval_id)
    return run_job(_WORKER_EVALUATOR, job)


def _result_of(fut: Any, job: Job) -> Result:
    """The result of a finished future that did not break the pool (an error here is e.g. a result
    that could not be pickled back to the driver: not the cell's fault, so the child is ``lost``)."""
    err = fut.exception()
    if err is None:
        return fut.result()
    return Result(job.eval_id, "lost", error=f"{type(err).__name__}: {err}")


_MAX_IDLE_BREAKS = 3


class LocalProcessBackend:
    """``num_workers`` spawned processes; with CUDA each gets its own GPU (``cuda:i``). The evaluator (with
    its data arrays) is pickled once per worker, not once per child.

    A worker that dies (segfault, OOM killer) breaks the whole ``ProcessPoolExecutor``: every unfinished
    job gets an error, including jobs that never started. The pool is then rebuilt and the unfinished
    jobs resubmitted; jobs that never started are never charged. A job that was running at a break is
    re-run in parallel with the others once; running at a second break makes it a suspect, re-run alone
    in the pool, and a job whose worker dies while it runs alone is retried up to ``max_retries`` times
    before it is recorded as failed. A pool found broken between jobs is simply rebuilt."""

    def __init__(self, evaluator: Evaluator, num_workers: int = 0, threads_per_worker: int = 1,
                 use_cuda: bool | None = None, max_retries: int = 2):
        use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
        n_gpu = torch.cuda.device_count() if use_cuda else 0
        self.num_workers = num_workers or (n_gpu if n_gpu else 2)
        self.devices = [f"cuda:{i % n_gpu}" for i in range(self.num_workers)] if n_gpu else None
        self.evaluator, self.threads = evaluator, threads_per_worker
        self.max_retries = max(0, int(max_retries))
        self.pool: ProcessPoolExecutor | None = None
        self.started: Any = None

    def _start(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("spawn")
        queue = None
        if self.devices:
            queue = ctx.Queue()
            for d in self.devices:
                queue.put(d)
        self.started = ctx.SimpleQueue()
        return ProcessPoolExecutor(self.num_workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(self.evaluator, queue, self.threads, self.started, os.getpid()))

    def _drain_started(self, into: set[int]) -> None:
        while self.started is not None and not self.started.empty():
            into.add(self.started.get())

    def _discard_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool, self.started = None, None

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        waiting: deque[Job] = deque(jobs)   # never submitted, or resubmitted after a break
        suspects: deque[Job] = deque()      # running at two breaks: re-run alone, one at a time
        breaks_seen: dict[int, int] = {}    # breaks a job was running at, while not alone
        deaths: dict[int, int] = {}         # deaths of a job's worker while the job ran alone
        started: set[int] = set()           # jobs that began running in the current pool
        idle_breaks = 0                     # breaks in a row with no job running (e.g. failing start-up)
        futures: dict[Any, Job] = {}
        try:
            while waiting or suspects or futures:
                if self.pool is not None and getattr(self.pool, "_broken", False):
                    self._discard_pool()  # a worker died while idle, e.g. between batches
                if self.pool is None:
                    self.pool = self._start()
                alone = bool(suspects)
                try:
                    if alone and not futures:
                        job = suspects.popleft()
                        futures[self.pool.submit(_run_in_worker, job)] = job
                    while waiting and not alone:
                        job = waiting.popleft()
                        futures[self.pool.submit(_run_in_worker, job)] = job
                except BrokenProcessPool:  # broke between our check and the submit: nothing of it ran
                    (suspects if alone else waiting).appendleft(job)
                    if not futures:
                        self._discard_pool()
                        idle_breaks += 1
                        if idle_breaks >= _MAX_IDLE_BREAKS:
                            yield from self._give_up([*suspects, *waiting])
                            return
                        continue
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                if not any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    for fut in done:
                        yield _result_of(fut, futures.pop(fut))
                    idle_breaks = 0
                    self._drain_started(started)
                    continue
                # The pool is broken and every future fails soon; keep the results that came first.
                wait(list(futures))
                self._drain_started(started)
                unfinished = []
                for fut, job in futures.items():
                    if isinstance(fut.exception(), BrokenProcessPool):
                        unfinished.append(job)
                    else:
                        yield _result_of(fut, job)
                futures.clear()
                self._discard_pool()
                running = [j for j in unfinished if j.eval_id in started]
                waiting.extendleft(reversed([j for j in unfinished if j.eval_id not in started]))
                started = set()
                if not running:
                    idle_breaks += 1
                    if idle_breaks >= _MAX_IDLE_BREAKS:
                        yield from self._give_up([*suspects, *waiting])
                        return
                elif alone:  # it ran alone, so its worker died because of it
                    job = running[0]
                    deaths[job.eval_id] = deaths.get(job.eval_id, 0) + 1
                    if deaths[job.eval_id] > self.max_retries:
                        yield Result(job.eval_id, "failed", error=f"worker process died while evaluating "
                                     f"this child ({deaths[job.eval_id]} times; OOM killer or a crash?)")
                    else:
                        suspects.append(job)
                else:  # any of them, or an idle worker, may have died: re-run in parallel once, then alone
                    for job in running:
                        breaks_seen[job.eval_id] = breaks_seen.get(job.eval_id, 0) + 1
                    suspects.extend(j for j in running if breaks_seen[j.eval_id] >= 2)
                    waiting.extendleft(reversed([j for j in running if breaks_seen[j.eval_id] < 2]))
        finally:
            for fut in futures:
                fut.cancel()

    @staticmethod
    def _give_up(jobs: list[Job]) -> Iterator[Result]:
        for job in jobs:
            yield Result(job.eval_id, "lost", error="worker processes keep dying before they run a child "
                         "(see their stderr)")

    def close(self) -> None:
        self._discard_pool()


# --- Ray ---------------------------------------------------------------------------------------------
def _ray_run(evaluator: Evaluator, job: Job, threads: int) -> Result:
    torch.set_num_threads(max(1, threads))
    if hasattr(evaluator, "device"):  # Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned
        evaluator.device = "cuda" if torch.cuda.is_available() else "cpu"
    return run_job(evaluator, job)


class RayBackend:
    """Children as Ray tasks: one GPU each when the cluster has GPUs, else one CPU each. A task whose
    worker process dies is retried ``max_retries`` times (Ray's task retries), then recorded as failed."""

    def __init__(self, evaluator: Evaluator, address: str = "", num_workers: int = 0, max_retries: int = 2,
                 threads_per_worker: int = 1):
        try:
            import ray
        except ImportError:
            raise ImportError("WORKERS.BACKEND ray needs ray: pip install 'ray[default]' "
                              "(or pip install -e '.[ray]')") from None
        self.ray = ray
        # Ship our two packages with the job (Ray zips and uploads them once, by content hash), so that
        # cluster workers import this code without a shared filesystem or an install of this repo. The
        # third-party dependencies (torch, fvcore, ...) must be installed on the cluster's nodes.
        runtime_env = {"py_modules": [str(Path(search.__file__).parent), str(Path(nasnet_det.__file__).parent)]}
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            kwargs: dict[str, Any] = dict(runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
            if address:
                ray.init(address=address, **kwargs)
            else:  # NUM_WORKERS 0 means one per GPU: give a local Ray a CPU slot for each of them
                ray.init(num_cpus=num_workers or max(2, torch.cuda.device_count()), **kwargs)
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        options: dict[str, Any] = dict(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=max_retries)
        if not self.owns_ray:  # someone else's ray.init: our job-level runtime_env was not applied
            options["runtime_env"] = runtime_env
        self.remote = ray.remote(_ray_run).options(**options)
        self.evaluator_ref = ray.put(evaluator)
        self.threads, self.max_retries = threads_per_worker, max_retries

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        refs = {self.remote.remote(self.evaluator_ref, job, self.threads): job for job in jobs}
        try:
            while refs:
                done, _ = self.ray.wait(list(refs), num_returns=1)
                job = refs.pop(done[0])
                try:
                    yield self.ray.get(done[0])
                except Exception as e:  # worker died more than max_retries times, or the task was lost
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    # Each task has its own worker: a crash or Ray's OOM kill is the child's doing, anything
                    # else (a lost node or object) is not.
                    child_fault = isinstance(e, (self.ray.exceptions.WorkerCrashedError,
                                                 self.ray.exceptions.OutOfMemoryError))
                    yield Result(job.eval_id, "failed" if child_fault else "lost",
                                 error=f"ray task failed (after up to {self.max_retries} retries): {msg}")
        finally:
            for ref in refs:
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False


def make_backend(kind: str, evaluator: Evaluator, num_workers: int = 0, ray_address: str = "",
                 max_retries: int = 2, threads_per_worker: int = 1):
    if kind == "inline":
        return InlineBackend(evaluator)
    if kind == "local":
        return LocalProcessBackend(evaluator, num_workers, threads_per_worker, max_retries=max_retries)
    if kind == "ray":
        return RayBackend(evaluator, ray_address, num_workers, max_retries, threads_per_worker)
    raise ValueError(f"WORKERS.BACKEND must be 'local', 'ray' or 'inline', got {kind!r}")
