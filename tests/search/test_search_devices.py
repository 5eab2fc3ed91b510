"""Where a search's children train and are timed on a GPU machine (issue 28): each local worker on its own GPU
through the objective's wrapper, a Ray task on the GPU Ray gave it, the latency timed on the worker's GPU, and the
lookup table's CUDA timer. No GPU here: the CUDA queries are simulated (torch.cuda.is_available / device_count,
set_device recorded), the children's training and the timers are recorders, and the networks stay on the CPU."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import nasnet_det.latency as latency
import search.reward
import search.workers
from nasnet_det.data.cifar import synthetic_cifar
from nasnet_det.genotypes import NASNET_A
from nasnet_det.latency import LatencySetting, LookupTableLatency, cuda_event_ms, median_ms, unit_timer
from search.config import load_cfg
from search.objective import Objective, ObjectiveEvaluator
from search.reward import ChildData, ChildEvaluator, default_child_network
from search.workers import Job, LocalProcessBackend, Result, local_worker_main, ray_task, search_runtime_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NETWORK = {**default_child_network(), "NUM_CELLS": 1, "FILTERS": 4}
CHILD = {"EPOCHS": 1, "MAX_STEPS": 1, "BATCH_SIZE": 8, "EVAL_BATCH_SIZE": 8, "LR": 0.05, "MOMENTUM": 0.9,
         "WEIGHT_DECAY": 5e-4, "AUGMENT": False, "IMAGE_SIZE": 8, "DEVICE": "auto"}
# the latency objective on CUDA, timing a 1 @ f 4 FPN backbone on 32 px (search/config.py keys)
CUDA_LATENCY = ["SEARCH.OBJECTIVE", "latency", "SEARCH.LATENCY.DEVICE", "cuda", "SEARCH.LATENCY.INPUT_SIZE", "32",
                "SEARCH.LATENCY.NUM_CELLS", "1", "SEARCH.LATENCY.FILTERS", "4", "SEARCH.LATENCY.WARMUP", "0",
                "SEARCH.LATENCY.REPEATS", "1"]


class Probe:
    """What the simulated GPUs were asked: set_device calls, the device each child trained on, and each timing
    (timer name, device)."""

    def __init__(self) -> None:
        self.set_device: list[str] = []
        self.trained_on: list[str] = []
        self.timed: list[tuple[str, str]] = []


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Probe:
    """Two simulated GPUs; children and timings recorded instead of run (the networks stay on the CPU)."""
    probe = Probe()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: probe.set_device.append(str(torch.device(d))))

    def train_child(genotype, child, data, seed=0, device="cpu", network=None) -> dict[str, Any]:
        probe.trained_on.append(str(device))
        return {"reward": 0.5, "params": 1}

    def timer(name: str):
        def record(fn, warmup: int, repeats: int, device: torch.device) -> float:
            probe.timed.append((name, str(device)))
            return 1.0
        return record

    real_backbone, real_input = latency.detection_backbone, latency.input_for

    def cpu_backbone(genotype, setting):
        model = real_backbone(genotype, setting)
        model.to = lambda *args, **kwargs: model  # stays on the CPU: the timers only record where it was sent
        return model

    monkeypatch.setattr(search.reward, "train_child", train_child)
    monkeypatch.setattr(latency, "median_ms", timer("median_ms"))
    monkeypatch.setattr(latency, "cuda_event_ms", timer("cuda_event_ms"), raising=False)
    monkeypatch.setattr(latency, "detection_backbone", cpu_backbone)
    monkeypatch.setattr(latency, "input_for", lambda model, setting, device: real_input(model, setting, "cpu"))
    monkeypatch.setattr(latency, "device_name", lambda device: "Simulated GPU")
    # local_worker_main as a spawned worker runs it, but in this process: no parent-death signal, Ctrl-C left alone
    monkeypatch.setattr(search.workers, "die_with_parent", lambda pid=None: True)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    return probe


def _objective_evaluator(tmp_path: Path, estimator: str) -> ObjectiveEvaluator:
    x, y = synthetic_cifar(40, seed=0)
    child = ChildEvaluator(CHILD, ChildData.from_arrays(x, y, val_size=10, seed=0), NETWORK)
    objective = Objective(load_cfg(None, [*CUDA_LATENCY, "SEARCH.LATENCY.ESTIMATOR", estimator,
                                          "SEARCH.LATENCY.CACHE_DIR", str(tmp_path / "lut")]))
    if isinstance(objective.estimator, LookupTableLatency):
        objective.estimator.fixed_ms = 0.0  # a built (empty) table: every unit of the child is timed on demand
    return ObjectiveEvaluator(child, objective)


def _run_worker(evaluator: Any, device: str) -> list[Any]:
    """One child through a local worker's loop (in this process, on a copy of the evaluator as spawn makes)."""
    ours, theirs = mp.Pipe()
    ours.send(Job(0, NASNET_A.to_dict(), seed=0))
    ours.send(None)
    local_worker_main(theirs, pickle.loads(pickle.dumps(evaluator)), device, 1, os.getpid())
    messages = []
    while ours.poll():
        messages.append(ours.recv())
    return messages


@pytest.mark.parametrize("estimator,timer", [("measure", "median_ms"), ("lut", "cuda_event_ms")])
def test_each_local_worker_trains_and_times_on_its_own_gpu_through_the_objective_wrapper(
        tmp_path: Path, gpus: Probe, estimator: str, timer: str):
    evaluator = _objective_evaluator(tmp_path, estimator)
    backend = LocalProcessBackend(evaluator, use_cuda=True)
    assert backend.devices == ["cuda:0", "cuda:1"]  # one worker per simulated GPU
    for device in backend.devices:
        gpus.set_device.clear(), gpus.trained_on.clear(), gpus.timed.clear()
        *_, result = _run_worker(evaluator, device)
        assert isinstance(result, Result) and result.status == "ok", result
        assert result.latency_ms is not None and result.accuracy == 0.5
        assert gpus.set_device == [device]  # the worker's current GPU: a plain "cuda" lands there too
        assert gpus.trained_on == [device]  # the wrapped evaluator got it
        assert gpus.timed and set(gpus.timed) == {(timer, device)}  # and the latency estimator


def test_a_ray_task_trains_on_the_gpu_ray_gave_it_and_a_task_without_one_on_the_cpu(
        tmp_path: Path, gpus: Probe, monkeypatch: pytest.MonkeyPatch):
    ray = pytest.importorskip("ray")
    job = Job(0, NASNET_A.to_dict(), seed=0)
    with monkeypatch.context() as driver:  # the driver (head node) has no GPU: the child was built for the CPU
        driver.setattr(torch.cuda, "is_available", lambda: False)
        evaluator = _objective_evaluator(tmp_path, "measure")
    assert evaluator.evaluator.device == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])  # Ray gave the task a GPU, the only one it sees
    result = ray_task(pickle.loads(pickle.dumps(evaluator)), job, 1)
    assert result.status == "ok", result.error
    assert gpus.trained_on == ["cuda"] and set(gpus.timed) == {("median_ms", "cuda")}
    assert gpus.set_device == []  # "cuda" is the task's one visible GPU already
    # a task given no GPU trains on the CPU, although the driver that built the child had CUDA
    gpus.trained_on.clear()
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert ray_task(ChildEvaluator(CHILD, evaluator.evaluator.data, NETWORK), job, 1).status == "ok"
    assert gpus.trained_on == ["cpu"]


def test_a_cpu_latency_setting_is_timed_on_the_cpu_in_a_gpu_worker(gpus: Probe):
    estimator = latency.MeasuredLatency(LatencySetting(device="cpu", input_size=32, num_cells=1, filters=4,
                                                       warmup=0, repeats=1))
    estimator.place_on("cuda:1")
    assert estimator.timing_device() == torch.device("cpu")
    estimator.latency_ms(NASNET_A)
    assert gpus.timed == [("median_ms", "cpu")]


def test_the_lookup_table_times_units_with_cuda_events_on_a_gpu_and_as_before_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch):
    assert unit_timer(torch.device("cuda:1")) is cuda_event_ms and unit_timer(torch.device("cuda")) is cuda_event_ms
    assert unit_timer(torch.device("cpu")) is median_ms
    # a CPU table keeps its key (tables on disk stay valid); a CUDA table names its timer (older ones are rebuilt)
    cpu_key = LatencySetting(device="cpu").table_key()
    assert set(cpu_key) == {"device", "device_name", "input_size", "num_cells", "filters", "backbone", "threads",
                            "torch"}
    monkeypatch.setattr(latency, "device_name", lambda device: "Simulated GPU")
    assert LatencySetting(device="cuda").table_key()["unit_timer"] == "cuda_events"


def test_the_cuda_event_timer_is_warm_up_then_one_timed_loop_between_two_events(monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []

    class Event:
        def __init__(self, enable_timing: bool = False):
            assert enable_timing

        def record(self) -> None:
            calls.append("record")

        def synchronize(self) -> None:
            calls.append("sync")

        def elapsed_time(self, end: Event) -> float:
            return 8.0  # ms between the two events

    class Device:
        def __init__(self, device: torch.device):
            calls.append(f"on {device}")

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "device", Device)
    ms = cuda_event_ms(lambda: calls.append("call"), warmup=2, repeats=4, device=torch.device("cuda:1"))
    assert ms == 2.0  # 8 ms over 4 calls
    assert calls == ["on cuda:1", "call", "call", "record", "call", "call", "call", "call", "record", "sync"]


def test_the_searchs_ray_job_carries_the_dataset_and_cache_variables(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "datasets")  # relative: a Ray worker's cwd is not ours
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TORCH_HOME", raising=False)
    env = search_runtime_env()
    assert [Path(m).name for m in env["py_modules"]] == ["search", "nasnet_det"]
    assert env["env_vars"]["DETECTRON2_DATASETS"] == str(tmp_path / "datasets")
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and "TORCH_HOME" not in env["env_vars"]


@pytest.mark.ray
def test_a_ray_task_of_the_search_sees_the_dataset_root_of_the_driver(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path):
    ray = pytest.importorskip("ray")
    from search.workers import RayBackend

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "datasets")
    expected = str(tmp_path / "datasets")

    def sees_the_root(genotype, seed) -> dict[str, Any]:
        return {"reward": float(os.environ.get("DETECTRON2_DATASETS") == expected), "params": 0}

    backend = RayBackend(sees_the_root, num_workers=1, max_retries=0)
    try:
        (result,) = list(backend.run([Job(0, NASNET_A.to_dict(), seed=0)]))
    finally:
        backend.close()
    assert not ray.is_initialized()
    assert (result.status, result.reward) == ("ok", 1.0), result.error
