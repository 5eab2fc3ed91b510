"""Where children are evaluated: in this process, in local worker processes (one per GPU, or N CPU
workers), or on Ray (one child per GPU of a cluster, with retries).

Every backend takes a picklable *evaluator* ``fn(genotype, seed) -> {"reward": float, "params": int, ...}``
(one that trains on a device is :class:`DevicePlaced`: each worker gives it its own; a wrapper forwards it)
and is an asynchronous queue: ``submit`` a job whenever ``capacity()`` allows one more in flight, ``wait``
for the results that are ready (at least one). An evaluator that raises, runs out of memory or returns a
non-finite reward gives a ``failed`` result with the reason; the search goes on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

import nasnet_det
from nasnet_det.engine.process import die_with_parent
from nasnet_det.engine.ray_env import check_ray_address, ray_runtime_env
from nasnet_det.space import Genotype
from nasnet_det.utils.registry import Registry

Evaluator = Callable[[Genotype, int], dict[str, Any]]
# What an evaluator may return beside reward and params, journaled with the child (search/objective.py).
logger = logging.getLogger(__name__)

COST_FIELDS = ("accuracy", "latency_ms", "mult_adds", "backbone_params")


@runtime_checkable
class DevicePlaced(Protocol):
    """An evaluator that runs where its worker tells it: :meth:`place_on` gets the worker's device ("cuda:i" for
    the i-th local GPU worker, "cuda" in a Ray task that was given a GPU, "cpu"). An evaluator that wraps another
    (search/objective.py) implements it by forwarding the device to what it wraps."""

    def place_on(self, device: str) -> None: ...


def place_on_device(evaluator: Evaluator, device: str) -> None:
    """Put a worker on ``device``: a CUDA device with an index becomes the process's current GPU (so code that says
    plain "cuda" -- a latency estimator, a library default -- lands there too), and the evaluator gets it."""
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
    if isinstance(evaluator, DevicePlaced):
        evaluator.place_on(device)


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
    # The cell's detection-backbone costs and its raw accuracy, when the objective profiles (search/objective.py)
    accuracy: float | None = None
    latency_ms: float | None = None
    mult_adds: int | None = None
    backbone_params: int | None = None


def run_job(evaluator: Evaluator, job: Job) -> Result:
    """Evaluate one child, turning every failure into a ``failed`` result with a one-line reason."""
    t0 = time.perf_counter()
    try:
        out = evaluator(Genotype.from_dict(job.genotype), job.seed)
        reward = float(out["reward"])
        if not math.isfinite(reward):
            raise FloatingPointError(f"reward is {reward}")
        return Result(job.eval_id, "ok", reward, time.perf_counter() - t0, out.get("params"),
                      **{k: out.get(k) for k in COST_FIELDS})
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        reason = f"out of memory: {str(e).splitlines()[0] if str(e) else 'CUDA OOM'}"
    except MemoryError:
        reason = "out of memory (host RAM)"
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        reason = f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
    return Result(job.eval_id, "failed", None, time.perf_counter() - t0, None, reason)


#: every backend by the name ``WORKERS.BACKEND`` uses (its class's ``name``)
QUEUE_BACKENDS = Registry("WORKERS.BACKEND")


class QueueBackend(ABC):
    """The interface of every backend: ``worker_count`` (children it runs at once), ``capacity`` (children worth
    keeping in flight now), ``submit``, ``wait`` (blocks until at least one submitted child finished;
    returns every result that is ready) and ``close``. ``run`` evaluates a list of jobs through it. A backend
    ``WORKERS.BACKEND`` can name is registered in :data:`QUEUE_BACKENDS` and built by ``from_settings``."""

    #: the name ``WORKERS.BACKEND`` uses (the registry's key)
    name: ClassVar[str] = ""

    # Children queued beyond the workers: a worker that frees starts the next child at once, instead of
    # idling while the driver journals the result and samples (it costs that child one result of staleness).
    prefetch = 1

    @abstractmethod
    def worker_count(self) -> int:
        """Children this backend runs at once."""

    def capacity(self) -> int:
        return self.worker_count() + self.prefetch

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start (or queue) one child."""

    @abstractmethod
    def wait(self) -> list[Result]:
        """Block until a submitted child finished; every result that is ready."""

    def close(self) -> None:  # noqa: B027 (an optional hook: backends without resources keep it)
        pass

    @classmethod
    def from_settings(cls, evaluator: Evaluator, **settings: Any) -> QueueBackend:
        """The backend evaluating with ``evaluator``, as the ``WORKERS`` settings (:func:`make_backend`'s keyword
        arguments) say; each backend reads those it has (default: none)."""
        return cls(evaluator)

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        waiting, in_flight = deque(jobs), 0
        while waiting or in_flight:
            while waiting and in_flight < self.capacity():
                self.submit(waiting.popleft())
                in_flight += 1
            for res in self.wait():
                in_flight -= 1
                yield res


@QUEUE_BACKENDS.register()
class InlineBackend(QueueBackend):
    """Runs children one at a time in this process (debugging, pure-function rewards)."""

    name = "inline"

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self.queued: deque[Job] = deque()

    prefetch = 0  # the driver is the worker: nothing to overlap

    def worker_count(self) -> int:
        return 1

    def submit(self, job: Job) -> None:
        self.queued.append(job)

    def wait(self) -> list[Result]:
        return [run_job(self.evaluator, self.queued.popleft())]


# --- local worker processes --------------------------------------------------------------------------
_MAX_START_FAILURES = 3  # workers in a row that die before running a child: give up (broken set-up)


def local_worker_main(conn: Connection, evaluator: Evaluator, device: str, threads: int, parent_pid: int) -> None:
    """One worker process: evaluates the jobs its driver sends, one at a time, until it gets ``None``.
    It says "ready" once set up and ("started", id) before each child, so the driver can tell a child
    that killed its worker from a worker that died while idle or while starting."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops us
    torch.set_num_threads(max(1, threads))
    place_on_device(evaluator, device)
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the driver went away
            return
        if job is None:
            return
        conn.send(("started", job.eval_id))
        result = run_job(evaluator, job)
        try:
            conn.send(result)
        except Exception as e:  # e.g. a result that cannot be pickled: not the cell's fault
            conn.send(Result(job.eval_id, "lost", error=f"result could not be sent back: {type(e).__name__}: {e}"))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    job: Job | None = None       # the child it was sent, until its result comes back
    started: bool = False        # it said it began that child


@QUEUE_BACKENDS.register()
class LocalProcessBackend(QueueBackend):
    """``num_workers`` spawned worker processes, each with its own pipe; with CUDA each gets its own GPU
    (``cuda:i``). The evaluator (with its data arrays) is pickled once per worker, not once per child.

    Each worker runs one child at a time, so a worker that dies (segfault, OOM killer) takes exactly one
    child with it: the one it had said it started. That child is re-run in a fresh worker up to
    ``max_retries`` times, then recorded as failed. A worker that dies while idle or before it starts its
    child is replaced and charges no child; if workers keep dying before they run anything (a broken
    set-up), the child is recorded as ``lost``. ``max_in_flight`` > 0 caps the children in flight (as on
    Ray): fewer than ``num_workers`` leaves the other workers unstarted."""

    name = "local"

    def __init__(self, evaluator: Evaluator, num_workers: int = 0, threads_per_worker: int = 1,
                 use_cuda: bool | None = None, max_retries: int = 2, max_in_flight: int = 0):
        chosen = use_cuda is None
        use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
        n_gpu = torch.cuda.device_count() if use_cuda else 0
        self.evaluator, self.threads_per_worker = evaluator, threads_per_worker
        self.num_workers = num_workers or (n_gpu if n_gpu else 2)
        self.devices = [f"cuda:{i % n_gpu}" if n_gpu else "cpu" for i in range(self.num_workers)]
        if chosen:  # say where the children train: a GPU machine whose CUDA does not work must not go unnoticed
            if n_gpu:
                logger.info("search workers: %d, on %s", self.num_workers, ", ".join(sorted(set(self.devices))))
            else:
                from nasnet_det.engine.devices import cuda_unavailable_reason

                logger.warning("search workers: %d on the CPU (%s)", self.num_workers, cuda_unavailable_reason())
        self.max_retries = max(0, int(max_retries))
        self.max_in_flight = max(0, int(max_in_flight))
        self.workers: list[_Worker | None] = [None] * self.num_workers
        self.queued: deque[Job] = deque()  # submitted, not yet handed to a worker (or to be re-run)
        self.deaths: dict[int, int] = {}   # eval id -> workers it killed
        self.start_failures = 0            # workers in a row that died before running a child
        self.ctx = mp.get_context("spawn")

    @classmethod
    def from_settings(cls, evaluator: Evaluator, num_workers: int = 0, threads_per_worker: int = 1,
                      max_retries: int = 2, max_in_flight: int = 0, **settings: Any) -> LocalProcessBackend:
        return cls(evaluator, num_workers, threads_per_worker, max_retries=max_retries, max_in_flight=max_in_flight)

    def worker_count(self) -> int:
        return min(self.num_workers, self.max_in_flight) if self.max_in_flight else self.num_workers

    def capacity(self) -> int:
        return self.max_in_flight if self.max_in_flight else self.num_workers + self.prefetch

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w is not None and w.process.is_alive()]

    def start(self) -> None:
        """Start every worker now and wait until each is set up (otherwise they start with their first child)."""
        for i, w in enumerate(self.workers):
            if w is None:
                self.workers[i] = self._spawn(i)
        for w in self.workers:
            if w is not None and w.conn.poll(None):
                self._read(w)

    def _spawn(self, i: int) -> _Worker:
        ours, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(target=local_worker_main, name=f"search-worker-{i}", daemon=True,
                                args=(theirs, self.evaluator, self.devices[i], self.threads_per_worker, os.getpid()))
        proc.start()
        theirs.close()
        return _Worker(proc, ours)

    def submit(self, job: Job) -> None:
        self.queued.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        for i, w in enumerate(self.workers):
            if not self.queued:
                return
            if w is not None and w.job is None and not w.process.is_alive():  # died while idle
                self._reap(w)
                w = self.workers[i] = None
            if w is None:
                w = self.workers[i] = self._spawn(i)
            if w.job is None:
                w.job, w.started = self.queued.popleft(), False
                try:
                    w.conn.send(w.job)
                except OSError:  # it died a moment ago; wait() sees its sentinel and requeues the job
                    pass

    def _read(self, w: _Worker) -> list[Result]:
        """Every message the worker has written; EOF (it died) ends the reading."""
        out = []
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg == "ready":
                    self.start_failures = 0
                elif isinstance(msg, tuple):
                    w.started = True
                else:
                    out.append(msg)
                    w.job, w.started = None, False
        except (EOFError, OSError):
            pass
        return out

    def wait(self) -> list[Result]:
        results: list[Result] = []
        while not results:
            self._dispatch()
            busy = [w for w in self.workers if w is not None and w.job is not None]
            if not busy:
                raise RuntimeError("wait() called with no child in flight")
            wait_for_any([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for i, w in enumerate(self.workers):
                if w is None or w.job is None:
                    continue
                alive = w.process.is_alive()  # before reading: what it wrote before dying is in the pipe
                results += self._read(w)
                if w.job is not None and not alive:
                    self.workers[i] = None
                    results += self._worker_died(w)
        self._dispatch()  # re-runs of children whose worker died
        return results

    def _worker_died(self, w: _Worker) -> list[Result]:
        job, started = w.job, w.started
        self._reap(w)
        if not started:  # died before it began the child: not the child's doing
            self.start_failures += 1
            if self.start_failures >= _MAX_START_FAILURES:
                return [Result(job.eval_id, "lost", error=f"worker processes keep dying before they run a child "
                               f"({self.start_failures} in a row, exit code {w.process.exitcode}; see their stderr)")]
            self.queued.appendleft(job)
            return []
        deaths = self.deaths[job.eval_id] = self.deaths.get(job.eval_id, 0) + 1
        if deaths > self.max_retries:
            return [Result(job.eval_id, "failed", error=f"worker process died while evaluating this child "
                           f"({deaths} times, exit code {w.process.exitcode}; OOM killer or a crash?)")]
        self.queued.appendleft(job)
        return []

    @staticmethod
    def _reap(w: _Worker) -> None:
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()

    def close(self) -> None:
        for w in self.workers:
            if w is None:
                continue
            if w.job is None and w.process.is_alive():
                try:
                    w.conn.send(None)  # idle: let it exit on its own
                except OSError:
                    pass
            else:
                w.process.terminate()  # stopping mid-child: the journal still has that child as pending
        for w in self.workers:
            if w is not None:
                self._reap(w)
        self.workers = [None] * self.num_workers
        self.queued.clear()


# --- Ray ---------------------------------------------------------------------------------------------
def ray_task(evaluator: Evaluator, job: Job, threads: int) -> Result:
    """One child as a Ray task: on the GPU Ray gave the task (the CPU without one), ``threads`` torch threads."""
    import ray

    torch.set_num_threads(max(1, threads))
    # A task given a GPU sees only that one (Ray sets CUDA_VISIBLE_DEVICES): "cuda" is it. A task given none runs
    # on the CPU, whatever the evaluator was built with on the driver.
    place_on_device(evaluator, "cuda" if ray.get_gpu_ids() else "cpu")
    return run_job(evaluator, job)


def search_runtime_env() -> dict[str, Any]:
    """The Ray job's runtime_env of a search: our two packages shipped with the job (Ray zips and uploads them
    once, by content hash), so that cluster workers import this code without a shared filesystem or an install of
    this repo (the third-party dependencies, torch, fvcore, ..., must be installed on the cluster's nodes), and the
    data / cache variables of this environment (:func:`nasnet_det.engine.ray_env.worker_env_vars`)."""
    return ray_runtime_env([Path(__file__).parent, Path(nasnet_det.__file__).parent])


@QUEUE_BACKENDS.register()
class RayBackend(QueueBackend):
    """Children as Ray tasks: one GPU each when the cluster has GPUs, else one CPU each. As many are kept
    in flight as the cluster has GPUs (CPUs without GPUs; re-read every few seconds, so an autoscaled
    cluster is followed), or ``max_in_flight`` when that is set. A task whose worker process dies is
    retried ``max_retries`` times (Ray's task retries), then recorded as failed."""

    name = "ray"
    RESOURCE_REFRESH_S = 5.0

    def __init__(self, evaluator: Evaluator, address: str = "", num_workers: int = 0, max_retries: int = 2,
                 threads_per_worker: int = 1, max_in_flight: int = 0):
        try:
            import ray
        except ImportError:
            raise ImportError("WORKERS.BACKEND ray needs ray: pip install 'ray[default]' "
                              "(or pip install -e '.[ray]')") from None
        self.ray = ray
        runtime_env = search_runtime_env()
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            kwargs: dict[str, Any] = dict(runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
            if address:
                check_ray_address(address, "WORKERS.RAY_ADDRESS")  # ray.init would retry for minutes
                ray.init(address=address, **kwargs)
            else:  # NUM_WORKERS 0 means one per GPU: give a local Ray a CPU slot for each of them
                ray.init(num_cpus=num_workers or max(2, torch.cuda.device_count()), **kwargs)
        self.use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        # With someone else's ray.init our runtime_env was not applied, and Ray accepts local directories
        # only there: that caller ships (or installs) this code itself; the environment variables go with each
        # task (a task's env_vars are merged into the job's).
        task_env = {} if self.owns_ray or not runtime_env.get("env_vars") else \
            {"runtime_env": {"env_vars": runtime_env["env_vars"]}}
        self.remote = ray.remote(ray_task).options(num_cpus=1, num_gpus=1 if self.use_gpu else 0,
                                                   max_retries=max_retries, **task_env)
        self.evaluator_ref = ray.put(evaluator)
        self.threads, self.max_retries, self.max_in_flight = threads_per_worker, max_retries, max_in_flight
        self.refs: dict[Any, Job] = {}
        self._slots, self._slots_read = 1, -math.inf

    @classmethod
    def from_settings(cls, evaluator: Evaluator, ray_address: str = "", num_workers: int = 0, max_retries: int = 2,
                      threads_per_worker: int = 1, max_in_flight: int = 0, **settings: Any) -> RayBackend:
        return cls(evaluator, ray_address, num_workers, max_retries, threads_per_worker, max_in_flight)

    def worker_count(self) -> int:
        if self.max_in_flight > 0:
            return self.max_in_flight
        if time.monotonic() - self._slots_read > self.RESOURCE_REFRESH_S:
            total = self.ray.cluster_resources()
            self._slots = max(1, int(total.get("GPU", 0) if self.use_gpu else total.get("CPU", 0)))
            self._slots_read = time.monotonic()
        return self._slots

    def capacity(self) -> int:
        return self.max_in_flight if self.max_in_flight > 0 else self.worker_count() + self.prefetch

    def submit(self, job: Job) -> None:
        self.refs[self.remote.remote(self.evaluator_ref, job, self.threads)] = job

    def wait(self) -> list[Result]:
        if not self.refs:
            raise RuntimeError("wait() called with no child in flight")
        done, rest = self.ray.wait(list(self.refs), num_returns=1)
        if rest:  # and whatever else is ready already
            done += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [self._result(ref, self.refs.pop(ref)) for ref in done]

    def _result(self, ref: Any, job: Job) -> Result:
        try:
            return self.ray.get(ref)
        except Exception as e:  # worker died more than max_retries times, or the task was lost
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # Each task has its own worker: a crash or Ray's OOM kill is the child's doing, anything
            # else (a lost node or object) is not.
            child_fault = isinstance(e, (self.ray.exceptions.WorkerCrashedError,
                                         self.ray.exceptions.OutOfMemoryError))
            return Result(job.eval_id, "failed" if child_fault else "lost",
                          error=f"ray task failed (after up to {self.max_retries} retries): {msg}")

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False


def make_backend(kind: str, evaluator: Evaluator, num_workers: int = 0, ray_address: str = "",
                 max_retries: int = 2, threads_per_worker: int = 1, max_in_flight: int = 0) -> QueueBackend:
    """The backend ``WORKERS.BACKEND`` names. ``max_in_flight`` > 0 sets how many children are kept in flight
    (Ray, and local, where it caps the ``num_workers`` kept busy plus the one queued)."""
    return QUEUE_BACKENDS.lookup(kind).from_settings(evaluator, num_workers=num_workers, ray_address=ray_address,
                                               max_retries=max_retries, threads_per_worker=threads_per_worker,
                                               max_in_flight=max_in_flight)
