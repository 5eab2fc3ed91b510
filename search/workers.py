"""Work queue for child evaluations: in-process, a local process pool (one worker per GPU, or N CPU
workers), or Ray (one child per GPU on a cluster, with retries).

Every backend takes a picklable *evaluator* ``fn(genotype, seed) -> {"reward": float, "params": int, ...}``
and yields one :class:`Result` per job as soon as it finishes. An evaluator that raises, runs out of
memory or returns a non-finite reward gives a ``failed`` result with the reason; the search goes on.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
    status: str               # "ok" or "failed"
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


def _init_worker(evaluator: Evaluator, devices: Any, threads: int) -> None:
    global _WORKER_EVALUATOR
    torch.set_num_threads(max(1, threads))
    device = devices.get() if devices is not None else "cpu"
    if hasattr(evaluator, "device"):
        evaluator.device = device
    _WORKER_EVALUATOR = evaluator


def _run_in_worker(job: Job) -> Result:
    assert _WORKER_EVALUATOR is not None, "worker was not initialised"
    return run_job(_WORKER_EVALUATOR, job)


class LocalProcessBackend:
    """``num_workers`` spawned processes; with CUDA each gets its own GPU (``cuda:i``). The evaluator (with
    its data arrays) is pickled once per worker, not once per child. A worker that dies (segfault, killed
    by the OOM killer) fails the children it was running and the pool is rebuilt."""

    def __init__(self, evaluator: Evaluator, num_workers: int = 0, threads_per_worker: int = 1,
                 use_cuda: bool | None = None):
        use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
        n_gpu = torch.cuda.device_count() if use_cuda else 0
        self.num_workers = num_workers or (n_gpu if n_gpu else 2)
        self.devices = [f"cuda:{i % n_gpu}" for i in range(self.num_workers)] if n_gpu else None
        self.evaluator, self.threads = evaluator, threads_per_worker
        self.pool: ProcessPoolExecutor | None = None

    def _start(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("spawn")
        queue = None
        if self.devices:
            queue = ctx.Queue()
            for d in self.devices:
                queue.put(d)
        return ProcessPoolExecutor(self.num_workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(self.evaluator, queue, self.threads))

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        if self.pool is None:
            self.pool = self._start()
        futures = {self.pool.submit(_run_in_worker, job): job for job in jobs}
        try:
            while futures:
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    job = futures.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool as e:
                        broken = True
                        yield Result(job.eval_id, "failed", error=f"worker process died ({e})")
                if broken:  # every remaining future fails too; report them and restart the pool
                    for job in list(futures.values()):
                        yield Result(job.eval_id, "failed", error="worker process died (pool broken)")
                    futures.clear()
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = None
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# --- Ray ---------------------------------------------------------------------------------------------
def _ray_run(evaluator: Evaluator, job: Job, threads: int) -> Result:
    torch.set_num_threads(max(1, threads))
    if hasattr(evaluator, "device"):  # Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned
        evaluator.device = "cuda" if torch.cuda.is_available() else "cpu"
    return run_job(evaluator, job)


class RayBackend:
    """Children as Ray tasks: one GPU each when the cluster has GPUs, else one CPU each. A task whose
    worker process dies is retried ``max_retries`` times, then recorded as failed."""

    def __init__(self, evaluator: Evaluator, address: str = "", num_workers: int = 0, max_retries: int = 2,
                 threads_per_worker: int = 1):
        try:
            import ray
        except ImportError:
            raise ImportError("WORKERS.BACKEND ray needs ray: pip install 'ray[default]' "
                              "(or pip install -e '.[ray]')") from None
        self.ray = ray
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            repo_root = str(Path(__file__).resolve().parents[1])
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)}}
            kwargs: dict[str, Any] = dict(runtime_env=env, include_dashboard=False, log_to_driver=False)
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_workers or 2, **kwargs)
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        self.remote = ray.remote(_ray_run).options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                                   max_retries=max_retries)
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
                    yield Result(job.eval_id, "failed",
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
        return LocalProcessBackend(evaluator, num_workers, threads_per_worker)
    if kind == "ray":
        return RayBackend(evaluator, ray_address, num_workers, max_retries, threads_per_worker)
    raise ValueError(f"WORKERS.BACKEND must be 'local', 'ray' or 'inline', got {kind!r}")
