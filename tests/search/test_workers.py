"""Child training and the work-queue backends (local processes, Ray)."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import time

import numpy as np
import pytest
from helpers.data import CIFAR_NPZ

from nasnet_det.data.cifar import load_cifar10_npz, synthetic_cifar
from nasnet_det.genotypes import NASNET_A
from nasnet_det.search_space import SearchSpace
from search.reward import ChildData, ChildEvaluator, default_child_network, train_child
from search.workers import InlineBackend, Job, LocalProcessBackend, run_job

# The children's network (MODEL.NASNET): N=1 @ f=4.
NETWORK = {**default_child_network(), "NUM_CELLS": 1, "FILTERS": 4}
CHILD = {"EPOCHS": 1, "MAX_STEPS": 3, "BATCH_SIZE": 16, "EVAL_BATCH_SIZE": 128,
         "LR": 0.05, "MOMENTUM": 0.9, "WEIGHT_DECAY": 5e-4, "AUGMENT": True, "IMAGE_SIZE": 16, "DEVICE": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 300, val: int = 100) -> ChildData:
    x, y = load_cifar10_npz(CIFAR_NPZ)  # the real sample shipped in the package
    x, y = x[:n], y[:n]
    return ChildData.from_arrays(x, y, val_size=val, seed=0)


def _jobs(n: int) -> list[Job]:
    import torch

    space = SearchSpace(5)
    acts = space.sample(n, torch.Generator().manual_seed(0))
    return [Job(i, space.genotype(a).to_dict(), seed=i) for i, a in enumerate(acts.tolist())]


def test_train_child_learns_synthetic_data():
    x, y = synthetic_cifar(600, seed=1)
    data = ChildData.from_arrays(x, y, val_size=200, seed=0)
    child = {**CHILD, "EPOCHS": 5, "MAX_STEPS": 30, "AUGMENT": False, "LR": 0.1}
    out = train_child(NASNET_A, child, data, seed=0, network=NETWORK)
    assert out["steps"] == 30 and out["params"] > 0
    assert out["reward"] > 0.4  # chance is 0.1


def test_diverging_child_fails_with_reason():
    child = {**CHILD, "LR": 1e12, "MAX_STEPS": 5}
    res = run_job(ChildEvaluator(child, _data(), NETWORK), _jobs(1)[0])
    assert res.status == "failed" and res.reward is None
    assert "ChildDiverged" in res.error or "nan" in res.error.lower()


def test_local_process_backend_trains_two_children_in_parallel():
    backend = LocalProcessBackend(ChildEvaluator(CHILD, _data(), NETWORK), num_workers=2, use_cuda=False)
    try:
        results = list(backend.run(_jobs(2)))
    finally:
        backend.close()
    assert sorted(r.eval_id for r in results) == [0, 1]
    for r in results:
        assert r.status == "ok", r.error
        assert 0.0 <= r.reward <= 1.0 and r.params > 0 and r.seconds > 0


class DiesOnSeedZero:
    """Kills its worker process (like the OOM killer or a segfault) for seed 0. Otherwise reports, as its
    reward, the signal the worker gets when the driver dies (Linux prctl PR_GET_PDEATHSIG)."""

    def __call__(self, genotype, seed):
        if seed == 0:
            os._exit(137)
        sig = ctypes.c_int(-1)
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
        return {"reward": float(sig.value), "params": 1}


def test_dead_worker_fails_only_its_own_child():
    backend = LocalProcessBackend(DiesOnSeedZero(), num_workers=2, use_cuda=False, max_retries=0)
    try:
        results = {r.eval_id: r for r in backend.run(_jobs(8))}
    finally:
        backend.close()
    assert sorted(results) == list(range(8))
    assert results[0].status == "failed" and "worker process died" in results[0].error
    for i in range(1, 8):  # the jobs queued or running beside it are re-run, not failed
        assert results[i].status == "ok", (i, results[i].error)
    if sys.platform.startswith("linux"):  # workers die with the driver instead of being orphaned
        assert {results[i].reward for i in range(1, 8)} == {float(signal.SIGKILL)}


def test_worker_dying_while_idle_between_batches_is_survived():
    backend = LocalProcessBackend(DiesOnSeedZero(), num_workers=2, use_cuda=False, max_retries=0)
    try:
        assert all(r.status == "ok" for r in backend.run([Job(i, NASNET_A.to_dict(), i) for i in (1, 2)]))
        victim = backend.worker_pids()[0]  # e.g. the OOM killer picks an idle worker
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):  # until it is gone
            if victim not in backend.worker_pids():
                break
            time.sleep(0.1)
        results = list(backend.run([Job(i, NASNET_A.to_dict(), i) for i in (3, 4)]))
    finally:
        backend.close()
    assert sorted(r.eval_id for r in results) == [3, 4] and all(r.status == "ok" for r in results)


def test_train_limit_is_a_random_subset():
    x, y = synthetic_cifar(400, seed=0)
    x[:, 0, 0, 0] = np.arange(400) % 256  # tag each image with its index
    x[:, 0, 0, 1] = np.arange(400) // 256
    data = ChildData.from_arrays(x, y, val_size=100, seed=0, train_limit=50)
    idx = data.x_train[:, 0, 0, 0].astype(int) + 256 * data.x_train[:, 0, 0, 1].astype(int)
    assert len(idx) == 50 and len(set(idx)) == 50
    full = ChildData.from_arrays(x, y, val_size=100, seed=0)
    full_idx = full.x_train[:, 0, 0, 0].astype(int) + 256 * full.x_train[:, 0, 0, 1].astype(int)
    assert set(idx) <= set(full_idx) and not np.array_equal(idx, full_idx[:50])  # not the lowest 50
    assert idx.max() > 300  # drawn from the whole range
    again = ChildData.from_arrays(x, y, val_size=100, seed=0, train_limit=50)
    assert np.array_equal(again.x_train, data.x_train) and np.array_equal(again.x_val, full.x_val)


def test_inline_backend_turns_exceptions_into_failures():
    def bad(genotype, seed):
        raise ValueError("boom")

    (res,) = list(InlineBackend(bad).run(_jobs(1)))
    assert res.status == "failed" and res.error.startswith("ValueError: boom")


@pytest.mark.ray
def test_ray_backend_runs_a_child():
    ray = pytest.importorskip("ray")
    from search.workers import RayBackend

    backend = RayBackend(ChildEvaluator(CHILD, _data(), NETWORK), num_workers=2, max_retries=1)
    try:
        results = list(backend.run(_jobs(2)))
    finally:
        backend.close()
    assert not ray.is_initialized()
    assert sorted(r.eval_id for r in results) == [0, 1]
    assert all(r.status == "ok" and 0.0 <= r.reward <= 1.0 for r in results), [r.error for r in results]
    assert all(math.isfinite(r.seconds) for r in results)
    assert np.isfinite([r.reward for r in results]).all()
