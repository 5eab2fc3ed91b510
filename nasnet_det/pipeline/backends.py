"""Where the training stages run (``PIPELINE.BACKEND``): each backend is one class registered with
``@PIPELINE_BACKENDS.register()``; the stages ask ``ctx.backend`` to run a tool and never compare backend names.

* ``local`` (default): each stage's tool as a child process on this machine (torchrun for several
  classification processes, detectron2's ``launch`` for several detection processes).
* ``ray``: one command on the head node runs every stage on a Ray cluster (``PIPELINE.RAY.ADDRESS``; empty
  starts a local one): the search's children as Ray tasks (the search's own Ray backend), pretraining / CIFAR
  training and detection / evaluation as Ray Train ``TorchTrainer`` jobs whose workers run the same trainers
  in the process group Ray Train set up (:mod:`nasnet_det.pipeline.ray_train`). A worker that dies is
  restarted by Ray Train (``FailureConfig``), and the trainer resumes from the stage folder's checkpoint.
  A stage whose config trains on the CPU (TRAIN.DEVICE / MODEL.DEVICE cpu) asks for no GPU; otherwise each
  worker asks for ``PIPELINE.RAY.GPUS_PER_WORKER`` GPUs (-1, the default: one for ``cuda``, and for ``auto`` one
  when the cluster has GPUs, see :func:`ray_worker_resources`); a worker given none has every GPU hidden from it
  and joins a gloo process group (it trains on the CPU).
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fvcore.common.config import CfgNode as CN

from nasnet_det.engine.ray_env import check_ray_address, ray_runtime_env, worker_env_vars
from nasnet_det.pipeline.launch import (
    LOG_NAME,
    StageError,
    last_error_line,
    python,
    run_tool,
    tool_path,
    torchrun_prefix,
)
from nasnet_det.pipeline.ray_local import LocalClusterRecord, stop_leftovers
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workers:
    """How many training processes a stage asks for: ``per_machine`` x ``machines`` (the local backend's
    torchrun / detectron2 launch also needs this machine's rank and the rendezvous address)."""

    per_machine: int = 1
    machines: int = 1
    machine_rank: int = 0
    rendezvous: str = ""

    @property
    def world_size(self) -> int:
        return self.per_machine * self.machines


class ExecutionBackend(ABC):
    name: ClassVar[str] = ""

    def __init__(self, cfg: CN):
        self.cfg = cfg

    @classmethod  # noqa: B027 (a backend may have no keys)
    def add_config(cls, node: CN) -> None:
        """Add the backend's keys to ``PIPELINE`` (``PIPELINE.<NAME>``)."""

    @classmethod  # noqa: B027
    def check_config(cls, node: CN) -> None:
        """Reject values of ``PIPELINE`` no run can use, naming the key."""

    def search_opts(self) -> list[str]:
        """``KEY VALUE`` overrides that put the search's children where this backend runs things."""
        return []

    @abstractmethod
    def run_classification(self, stage: str, workdir: Path, tool: str, dataset: str, args: list[str],
                           workers: Workers, quiet: bool, device: str) -> None:
        """Run ``tools/<tool>`` (``nasnet_det.classification.cli``) with ``args`` on ``workers`` processes;
        ``device``: the TRAIN.DEVICE the loaded config asks for (cpu | cuda | auto)."""

    @abstractmethod
    def run_detection(self, stage: str, workdir: Path, config_file: Path, args: list[str], workers: Workers,
                      eval_only: bool, quiet: bool, device: str) -> None:
        """Run ``tools/train_net.py --config-file config_file [--eval-only] args`` (``nasnet_det.detection.train``)
        on ``workers`` processes; ``device``: the MODEL.DEVICE the loaded config asks for."""

    def run_record(self, workdir: Path) -> dict[str, Any]:
        """What the manifest of a stage that ran in ``workdir`` records about how it ran (e.g. restarts)."""
        return {}

    def stop_leftovers(self, out: Path) -> str | None:
        """Stop what an earlier run in ``out`` started and left running when it was killed; the line saying so."""
        return None

    def close(self) -> None:  # noqa: B027
        """Release what the backend started (a local Ray cluster)."""


PIPELINE_BACKENDS = Registry("PIPELINE.BACKEND")  # @PIPELINE_BACKENDS.register() adds one, named by its ``name``


def add_backend_config(node: CN) -> None:
    node.BACKEND = "local"  # where the stages run: one of PIPELINE_BACKENDS (local | ray)
    for cls in PIPELINE_BACKENDS.values():
        cls.add_config(node)


def check_backend_config(node: CN) -> None:
    chosen = PIPELINE_BACKENDS.lookup(node.BACKEND)  # an unknown name: one line naming the key and the known names
    if node.BACKEND != chosen.name:  # the name as registered: the plan and the manifests compare it
        raise BadInputError(f"PIPELINE.BACKEND={node.BACKEND!r}: expected {chosen.name!r} (lower case)")
    for cls in PIPELINE_BACKENDS.values():
        cls.check_config(node)


def create_backend(cfg: CN) -> ExecutionBackend:
    return PIPELINE_BACKENDS.get(cfg.PIPELINE.BACKEND)(cfg)


@PIPELINE_BACKENDS.register()
class LocalBackend(ExecutionBackend):
    """Child processes on this machine: torchrun / detectron2 launch for several processes."""

    name = "local"

    def run_classification(self, stage: str, workdir: Path, tool: str, dataset: str, args: list[str],
                           workers: Workers, quiet: bool, device: str) -> None:
        try:
            prefix = torchrun_prefix(self.cfg, workers.per_machine, workers.machines, workers.machine_rank,
                                     workers.rendezvous)
        except ValueError as e:
            raise StageError(stage, f"{stage.upper()}: {e}") from None
        run_tool(stage, [*prefix, str(tool_path(stage, tool)), *args], workdir, quiet)

    def run_detection(self, stage: str, workdir: Path, config_file: Path, args: list[str], workers: Workers,
                      eval_only: bool, quiet: bool, device: str) -> None:
        launch = ["--num-gpus", str(workers.per_machine)]
        if eval_only:
            launch += ["--eval-only"]
        else:
            launch += ["--num-machines", str(workers.machines), "--machine-rank", str(workers.machine_rank),
                       "--dist-url", workers.rendezvous or "auto"]
        argv = [python(self.cfg), str(tool_path(stage, "train_net.py")), "--config-file", str(config_file), *launch,
                *args]
        run_tool(stage, argv, workdir, quiet)


def _error_line(workdir: Path) -> str:
    log = workdir / LOG_NAME
    return last_error_line(log.read_text(errors="replace")[-(1 << 16):]) if log.is_file() else ""


@dataclass(frozen=True)
class WorkerResources:
    """What each Ray Train worker of a stage asks for, why (``note``), and a ``warning`` when GPUs go unused or the
    cluster has too few of them now."""

    cpus: float
    gpus: float
    note: str
    warning: str = ""

    @property
    def process_group(self) -> str:
        """The torch.distributed backend of the workers: nccl on GPUs, gloo on CPUs."""
        return "nccl" if self.gpus else "gloo"

    def as_dict(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


def device_kind(device: str) -> str:
    """A stage's TRAIN.DEVICE / MODEL.DEVICE as ``cpu``, ``cuda`` (also ``cuda:N``) or ``auto``."""
    value = str(device).strip().lower()
    return "cuda" if value.startswith("cuda") else value if value in ("cpu", "auto") else "auto"


def ray_worker_resources(cpus_per_worker: float, gpus_per_worker: float, cluster: Mapping[str, float],
                         device: str = "auto", world_size: int = 1, device_key: str = "the stage's device"
                         ) -> WorkerResources:
    """The resources of one of ``world_size`` Ray Train workers of a stage whose config asks for ``device``
    (``device_key``: TRAIN.DEVICE / MODEL.DEVICE), under ``PIPELINE.RAY.CPUS_PER_WORKER`` / ``GPUS_PER_WORKER``,
    on a cluster with ``cluster`` resources (``ray.cluster_resources()``).

    ``cpu``: CPU workers (gloo), whatever the cluster has. ``cuda``: ``GPUS_PER_WORKER`` GPUs per worker (-1: one).
    ``auto``: ``GPUS_PER_WORKER`` -1 is one GPU when the cluster has GPUs, else a CPU worker; an explicit 0 on a
    cluster with GPUs is allowed, with a warning. Asking for more GPUs than the cluster has now is a warning (an
    autoscaler may add GPU nodes: the stage waits for them)."""
    cluster_gpus = float(cluster.get("GPU", 0) or 0)
    kind = device_kind(device)
    if kind == "cpu":
        gpus = 0.0
        note = f"{device_key} {device}: CPU workers (gloo), every GPU hidden from them"
    elif kind == "cuda":
        if gpus_per_worker == 0:
            raise ValueError(f"{device_key} is {device} but PIPELINE.RAY.GPUS_PER_WORKER is 0: a worker without a GPU "
                             "cannot train on CUDA (set GPUS_PER_WORKER 1, or -1)")
        gpus = 1.0 if gpus_per_worker < 0 else float(gpus_per_worker)
        note = f"{device_key} {device}, PIPELINE.RAY.GPUS_PER_WORKER {gpus_per_worker:g}: {gpus:g} GPU(s) per worker " \
               "(nccl)"
    elif gpus_per_worker < 0:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
        note = (f"{device_key} {device}, PIPELINE.RAY.GPUS_PER_WORKER -1 (auto): the cluster has {cluster_gpus:g} "
                "GPU(s), so " + ("one GPU per worker (nccl)" if gpus else "CPU workers (gloo)"))
    else:
        gpus = float(gpus_per_worker)
        note = f"PIPELINE.RAY.GPUS_PER_WORKER {gpus:g}: " + (f"{gpus:g} GPU(s) per worker (nccl)" if gpus else
                                                               "CPU workers (gloo)")
    if gpus == 0 and cpus_per_worker <= 0:
        raise ValueError(f"PIPELINE.RAY.CPUS_PER_WORKER is {cpus_per_worker:g} and the stage's workers get no GPU "
                         f"({device_key} {device}, GPUS_PER_WORKER {gpus_per_worker:g}): a worker needs a CPU (set "
                         "CPUS_PER_WORKER >= 1)")
    warning = ""
    needed = gpus * world_size
    if gpus == 0 and cluster_gpus > 0 and kind != "cpu":
        warning = (f"PIPELINE.RAY.GPUS_PER_WORKER is 0: the stage trains on CPUs although the cluster has "
                   f"{cluster_gpus:g} GPUs")
    elif gpus > 0 and cluster_gpus < needed:  # an autoscaler may add GPU nodes: wait rather than fail
        warning = (f"the stage's {world_size} Ray Train worker(s) x {gpus:g} GPU(s) (PIPELINE.RAY.GPUS_PER_WORKER "
                   f"{gpus_per_worker:g}) need {needed:g} GPUs but the cluster has {cluster_gpus:g} now: the stage "
                   "waits until GPU nodes join")
    return WorkerResources(float(cpus_per_worker), gpus, note, warning)


def train_worker_runtime_env(resources: WorkerResources, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The runtime_env of a stage's Ray Train workers: the data / cache variables of the driver's environment
    (also when someone else's ``ray.init`` left out ours), and, for a worker given no GPU, every GPU hidden
    (Ray leaves them visible to it, and the trainers would pick ``cuda:LOCAL_RANK`` over a gloo group)."""
    env_vars = worker_env_vars(environ)
    if not resources.gpus:
        env_vars["CUDA_VISIBLE_DEVICES"] = ""  # in the worker's environment from its start, before any CUDA call
    return {"env_vars": env_vars}


@PIPELINE_BACKENDS.register()
class RayBackend(ExecutionBackend):
    """Every stage on a Ray cluster: the search as Ray tasks, the training stages as Ray Train jobs."""

    name = "ray"

    def __init__(self, cfg: CN):
        super().__init__(cfg)
        self._owns_ray = False
        self._local: LocalClusterRecord | None = None  # of the local cluster we started
        self._address = ""

    @classmethod
    def add_config(cls, node: CN) -> None:
        node.RAY = CN()
        # "" starts a local Ray cluster on this machine; "auto" joins the one `ray start` runs here;
        # "HOST:6379" (or ray://HOST:10001) another cluster's head.
        node.RAY.ADDRESS = ""
        node.RAY.NUM_CPUS = 0  # CPUs of a local cluster (0: Ray's default, every core)
        # Ray Train's storage (run state, worker errors): "" = OUTPUT_DIR/ray_train. On several machines
        # OUTPUT_DIR must be shared storage anyway (rank 0 may run on any node and writes the stage folder).
        node.RAY.STORAGE_PATH = ""
        node.RAY.MAX_FAILURES = 2  # worker-group restarts per training stage; each resumes the checkpoint
        node.RAY.CPUS_PER_WORKER = 1  # per training worker (its torch threads)
        # -1: auto, one GPU per worker when the cluster has GPUs, else CPU workers; 0: CPU workers (gloo, every
        # GPU hidden from them); 1: one GPU per worker (nccl). A stage whose config says device cpu gets none.
        node.RAY.GPUS_PER_WORKER = -1

    @classmethod
    def check_config(cls, node: CN) -> None:
        r = node.RAY
        for key, low in (("NUM_CPUS", 0), ("MAX_FAILURES", 0), ("CPUS_PER_WORKER", 0), ("GPUS_PER_WORKER", -1)):
            if r[key] < low:
                raise ValueError(f"PIPELINE.RAY.{key} must be >= {low}, got {r[key]}")
        if r.CPUS_PER_WORKER == 0 and r.GPUS_PER_WORKER <= 0:
            raise ValueError(f"PIPELINE.RAY.CPUS_PER_WORKER is 0 and GPUS_PER_WORKER is {r.GPUS_PER_WORKER}: a worker "
                             "needs a CPU, or an explicit GPUS_PER_WORKER >= 1")

    def _ray(self):
        """Ray, connected (started on first use, so a run whose stages are all finished starts nothing)."""
        try:
            import ray
        except ImportError:
            raise ImportError("PIPELINE.BACKEND ray needs ray[train]: pip install -e '.[ray]'") from None
        if not ray.is_initialized():
            import nasnet_det

            r = self.cfg.PIPELINE.RAY
            # Ship the package with the job, as the search does, so cluster workers import this checkout, with the
            # data / cache variables of this environment.
            kwargs: dict[str, Any] = dict(runtime_env=ray_runtime_env([Path(nasnet_det.__file__).parent]),
                                          include_dashboard=False, log_to_driver=False)
            if r.ADDRESS:
                check_ray_address(r.ADDRESS, "PIPELINE.RAY.ADDRESS")  # ray.init would retry for minutes
                ray.init(address=r.ADDRESS, **kwargs)
            else:  # a new local cluster, never someone else's that happens to run on this machine
                ray.init(address="local", num_cpus=r.NUM_CPUS or None, **kwargs)
                # its processes, for the run after a kill -9 of this one (which would leave Ray's agents running)
                self._local = LocalClusterRecord(Path(self.cfg.OUTPUT_DIR).resolve())
                self._local.start()
            self._owns_ray = True
        if not self._address:  # also of a Ray someone else connected (the search's children join it too)
            self._address = ray.get_runtime_context().gcs_address
        return ray

    def search_opts(self) -> list[str]:
        self._ray()  # the search's children join this cluster
        return ["WORKERS.BACKEND", "ray", "WORKERS.RAY_ADDRESS", self._address]

    def _fit(self, stage: str, workdir: Path, kind: str, argv: list[str], workers: Workers, device: str,
             device_key: str) -> None:
        ray = self._ray()
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from nasnet_det.pipeline.ray_train import WORKERS_DIR, exit_code, train_loop_per_worker

        r = self.cfg.PIPELINE.RAY
        workdir.mkdir(parents=True, exist_ok=True)
        storage = Path(r.STORAGE_PATH or Path(self.cfg.OUTPUT_DIR) / "ray_train").resolve()
        try:
            resources = ray_worker_resources(r.CPUS_PER_WORKER, r.GPUS_PER_WORKER, ray.cluster_resources(), device,
                                             workers.world_size, device_key)
        except ValueError as e:
            raise StageError(stage, str(e)) from None
        with open(workdir / LOG_NAME, "a") as log:
            log.write(f"ray train: {resources.note}\n")
            if resources.warning:
                log.write(f"WARNING: {resources.warning}\n")
                logger.warning("WARNING stage %s: %s", stage, resources.warning)
            log.write(f"$ ray train {kind} on {workers.world_size} worker(s) {resources.as_dict()}: "
                      f"{' '.join(argv)}\n")
        trainer = TorchTrainer(
            train_loop_per_worker,
            # gloo for CPU workers: Ray Train's default follows use_gpu, said here so a CPU stage never gets nccl
            torch_config=TorchConfig(backend=resources.process_group),
            train_loop_config={"kind": kind, "argv": argv, "workdir": str(workdir), "cwd": os.getcwd()},
            scaling_config=ScalingConfig(num_workers=workers.world_size, use_gpu=resources.gpus > 0,
                                         resources_per_worker=resources.as_dict()),
            # a new Ray Train run per attempt of the stage: its workers, also those Ray Train restarts after a
            # failure, resume the trainer's own checkpoint in the stage folder (Ray Train checkpoints are unused)
            run_config=RunConfig(storage_path=str(storage), name=f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}",
                                 failure_config=FailureConfig(max_failures=r.MAX_FAILURES),
                                 worker_runtime_env=train_worker_runtime_env(resources)))
        (workdir / WORKERS_DIR / "rank0.exit").unlink(missing_ok=True)
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise StageError(stage, f"the Ray Train job failed after {r.MAX_FAILURES} restart(s) "
                                    f"(PIPELINE.RAY.MAX_FAILURES): {_error_line(workdir) or e}") from None
        if exit_code(workdir):
            raise StageError(stage, _error_line(workdir) or f"the trainer exited with code {exit_code(workdir)}")

    def run_classification(self, stage: str, workdir: Path, tool: str, dataset: str, args: list[str],
                           workers: Workers, quiet: bool, device: str) -> None:
        self._fit(stage, workdir, "classification", [*args, "DATA.DATASET", dataset], workers, device,
                  "TRAIN.DEVICE")

    def run_detection(self, stage: str, workdir: Path, config_file: Path, args: list[str], workers: Workers,
                      eval_only: bool, quiet: bool, device: str) -> None:
        self._fit(stage, workdir, "detection",
                  ["--config-file", str(config_file), *(["--eval-only"] if eval_only else []), *args], workers,
                  device, "MODEL.DEVICE")

    def run_record(self, workdir: Path) -> dict[str, Any]:
        from nasnet_det.pipeline.ray_train import WORKERS_DIR

        starts = workdir / WORKERS_DIR / "rank0.jsonl"  # rank 0's (re)starts over every Ray Train job of the stage
        return {"ray_worker_starts": len(starts.read_text().splitlines())} if starts.is_file() else {}

    def stop_leftovers(self, out: Path) -> str | None:
        return stop_leftovers(out)

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False
        if self._local is not None:
            self._local.stop()
            self._local = None
