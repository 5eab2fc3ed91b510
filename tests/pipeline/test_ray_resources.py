"""What a PIPELINE.BACKEND ray stage asks Ray for (issue 28): GPUs when the cluster has them (GPUS_PER_WORKER -1,
auto), a warning for CPU workers on a GPU cluster, every GPU hidden from a worker given none, and the driver's
dataset / cache variables in every worker's environment. The clusters are simulated (ray.cluster_resources) and
the Ray Train job is recorded instead of run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.pipeline import SMOKE

from nasnet_det.pipeline import load_pipeline_config
from nasnet_det.pipeline.backends import RayBackend, Workers, ray_worker_resources, train_worker_runtime_env

GPU_CLUSTER = {"CPU": 128.0, "GPU": 8.0, "memory": 1e12}
CPU_CLUSTER = {"CPU": 4.0, "memory": 1e10}


def test_auto_asks_for_a_gpu_per_worker_only_where_the_cluster_has_gpus():
    on_gpus = ray_worker_resources(1, -1, GPU_CLUSTER)
    assert on_gpus.as_dict() == {"CPU": 1.0, "GPU": 1.0} and not on_gpus.warning
    assert "auto" in on_gpus.note and "8 GPU" in on_gpus.note
    on_cpus = ray_worker_resources(2, -1, CPU_CLUSTER)
    assert on_cpus.as_dict() == {"CPU": 2.0} and not on_cpus.warning and "CPU workers" in on_cpus.note


def test_explicit_gpu_counts_are_kept_and_cpu_workers_on_a_gpu_cluster_are_warned_about():
    zero = ray_worker_resources(1, 0, GPU_CLUSTER)
    assert zero.as_dict() == {"CPU": 1.0}
    assert zero.warning == "PIPELINE.RAY.GPUS_PER_WORKER is 0: the stage trains on CPUs although the cluster has 8 GPUs"
    assert ray_worker_resources(1, 2, GPU_CLUSTER).as_dict() == {"CPU": 1.0, "GPU": 2.0}
    assert ray_worker_resources(1, 1, CPU_CLUSTER).warning.endswith("the cluster has 0 now: the stage waits until GPU "
                                                                    "nodes join")
    assert not ray_worker_resources(1, 0, CPU_CLUSTER).warning
    with pytest.raises(ValueError, match=r"^PIPELINE.RAY.CPUS_PER_WORKER is 0 and the stage.s workers get no GPU"):
        ray_worker_resources(0, -1, CPU_CLUSTER)
    assert ray_worker_resources(0, -1, GPU_CLUSTER).as_dict() == {"CPU": 0.0, "GPU": 1.0}


def test_a_worker_given_no_gpu_has_every_gpu_hidden_and_every_worker_gets_the_dataset_root(tmp_path: Path):
    environ = {"DETECTRON2_DATASETS": str(tmp_path / "coco"), "TORCH_HOME": "~/weights", "HOME": "/home/x",
               "PATH": "/usr/bin"}
    cpu = train_worker_runtime_env(ray_worker_resources(1, -1, CPU_CLUSTER), environ)["env_vars"]
    gpu = train_worker_runtime_env(ray_worker_resources(1, -1, GPU_CLUSTER), environ)["env_vars"]
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "CUDA_VISIBLE_DEVICES" not in gpu  # Ray sets a GPU worker's
    for env in (cpu, gpu):
        assert env["DETECTRON2_DATASETS"] == str(tmp_path / "coco")
        assert env["TORCH_HOME"] == str(Path("~/weights").expanduser())
        assert "PATH" not in env and "HOME" not in env  # only the tools' data / cache variables travel


def test_gpus_per_worker_defaults_to_auto_and_is_checked_in_one_line(tmp_path: Path):
    assert load_pipeline_config(SMOKE, []).PIPELINE.RAY.GPUS_PER_WORKER == -1
    with pytest.raises(ValueError, match=r"^PIPELINE.RAY.GPUS_PER_WORKER must be >= -1, got -2$"):
        load_pipeline_config(SMOKE, ["PIPELINE.RAY.GPUS_PER_WORKER", "-2"])
    with pytest.raises(ValueError, match=r"^PIPELINE.RAY.CPUS_PER_WORKER is 0 and GPUS_PER_WORKER is -1: "):
        load_pipeline_config(SMOKE, ["PIPELINE.RAY.CPUS_PER_WORKER", "0"])


class RecordedTrainer:
    """Stands in for ray.train.torch.TorchTrainer: keeps what the stage asked for, runs nothing."""

    made: list[RecordedTrainer] = []

    def __init__(self, train_loop_per_worker: Any, *, train_loop_config: dict, scaling_config: Any,
                 run_config: Any, torch_config: Any = None) -> None:
        self.scaling, self.run, self.torch = scaling_config, run_config, torch_config
        RecordedTrainer.made.append(self)

    def fit(self) -> None:
        return None


def test_a_stage_that_trains_on_the_cpu_asks_for_no_gpu_and_cuda_asks_for_one_whatever_the_cluster():
    cpu = ray_worker_resources(1, -1, GPU_CLUSTER, "cpu", 8, "TRAIN.DEVICE")
    assert cpu.as_dict() == {"CPU": 1.0} and cpu.process_group == "gloo" and not cpu.warning
    assert cpu.note == "TRAIN.DEVICE cpu: CPU workers (gloo), every GPU hidden from them"
    assert ray_worker_resources(1, 1, GPU_CLUSTER, "cpu").as_dict() == {"CPU": 1.0}
    cuda = ray_worker_resources(1, -1, GPU_CLUSTER, "cuda", 8, "MODEL.DEVICE")
    assert cuda.as_dict() == {"CPU": 1.0, "GPU": 1.0} and cuda.process_group == "nccl" and not cuda.warning
    assert ray_worker_resources(1, 2, GPU_CLUSTER, "cuda:0", 4).as_dict() == {"CPU": 1.0, "GPU": 2.0}
    with pytest.raises(ValueError, match=r"^MODEL.DEVICE is cuda but PIPELINE.RAY.GPUS_PER_WORKER is 0: "):
        ray_worker_resources(1, 0, GPU_CLUSTER, "cuda", 1, "MODEL.DEVICE")


def test_too_few_gpus_on_the_cluster_is_a_warning_with_the_numbers():
    short = ray_worker_resources(1, -1, {"CPU": 64.0, "GPU": 4.0}, "cuda", 8, "TRAIN.DEVICE")
    assert short.as_dict() == {"CPU": 1.0, "GPU": 1.0}
    assert short.warning == ("the stage's 8 Ray Train worker(s) x 1 GPU(s) (PIPELINE.RAY.GPUS_PER_WORKER -1) need 8 "
                             "GPUs but the cluster has 4 now: the stage waits until GPU nodes join")
    assert not ray_worker_resources(1, -1, GPU_CLUSTER, "auto", 8).warning


@pytest.fixture
def recorded_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Ray Train jobs recorded instead of run, on a cluster the test sets (``recorded_ray(cluster)``)."""
    ray = pytest.importorskip("ray")
    train_torch = pytest.importorskip("ray.train.torch")
    monkeypatch.setattr(RayBackend, "_ray", lambda self: ray)
    monkeypatch.setattr(train_torch, "TorchTrainer", RecordedTrainer)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "coco"))
    RecordedTrainer.made.clear()

    def on(cluster: dict) -> None:
        monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)  # a simulated cluster; no Ray is started

    return on


@pytest.mark.ray
@pytest.mark.parametrize("cluster,gpus_per_worker,use_gpu,hidden,warned", [
    (GPU_CLUSTER, -1, True, False, ""), (CPU_CLUSTER, -1, False, True, ""),
    (GPU_CLUSTER, 0, False, True, "PIPELINE.RAY.GPUS_PER_WORKER is 0: the stage trains on CPUs although the cluster "
                                  "has 8 GPUs"),
    (CPU_CLUSTER, 1, True, False, "the stage's 2 Ray Train worker(s) x 1 GPU(s) (PIPELINE.RAY.GPUS_PER_WORKER 1) "
                                  "need 2 GPUs but the cluster has 0 now: the stage waits until GPU nodes join")])
def test_a_stages_ray_train_job_asks_for_the_resources_of_the_cluster(
        tmp_path: Path, recorded_ray: Any, caplog: pytest.LogCaptureFixture, cluster: dict, gpus_per_worker: int,
        use_gpu: bool, hidden: bool, warned: str):
    recorded_ray(cluster)
    cfg = load_pipeline_config(SMOKE, ["PIPELINE.BACKEND", "ray", "OUTPUT_DIR", str(tmp_path / "run"),
                                       "PIPELINE.RAY.GPUS_PER_WORKER", str(gpus_per_worker)])
    workdir = tmp_path / "run" / "pretrain"
    RayBackend(cfg).run_classification("pretrain", workdir, "train_net.py", "imagenet", [], Workers(2), True, "auto")
    (trainer,) = RecordedTrainer.made
    assert trainer.scaling.num_workers == 2 and trainer.scaling.use_gpu is use_gpu
    assert trainer.scaling.resources_per_worker == ({"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1})
    assert trainer.torch.backend == ("nccl" if use_gpu else "gloo")
    env = trainer.run.worker_runtime_env["env_vars"]
    assert ("CUDA_VISIBLE_DEVICES" in env) is hidden and env.get("CUDA_VISIBLE_DEVICES", "") == ""
    assert env["DETECTRON2_DATASETS"] == str(tmp_path / "coco")
    log = (workdir / "stage.log").read_text()
    assert "PIPELINE.RAY.GPUS_PER_WORKER" in log.splitlines()[0]  # the stage log says what was chosen and why
    assert (f"WARNING: {warned}\n" in log) is bool(warned)  # in the stage log and on the console
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == (
        [f"WARNING stage pretrain: {warned}"] if warned else [])


@pytest.mark.ray
def test_the_smoke_stages_train_on_cpu_workers_with_gloo_on_a_gpu_cluster(tmp_path: Path, recorded_ray: Any):
    """Every smoke stage config says device cpu: on a cluster with GPUs its workers get none (a GPU would mean an
    nccl group around CPU tensors), and the plan says the same."""
    from nasnet_det.pipeline.plan import Machine, Target
    from nasnet_det.pipeline.planner import make_plan
    from nasnet_det.pipeline.stages import Context
    from nasnet_det.pipeline.stages.detect import DetectStage
    from nasnet_det.pipeline.stages.evaluate import EvaluateStage
    from nasnet_det.pipeline.stages.pretrain import PretrainStage

    recorded_ray(GPU_CLUSTER)
    cfg = load_pipeline_config(SMOKE, ["PIPELINE.BACKEND", "ray", "OUTPUT_DIR", str(tmp_path / "run"),
                                       "PRETRAIN.NPROC_PER_NODE", "2", "DETECT.NUM_GPUS", "2"])
    ctx = Context(cfg, tmp_path / "run", quiet=True)
    PretrainStage().train(ctx, tmp_path / "run" / "pretrain", [])
    inputs = {"genotype": tmp_path / "genotype.json", "backbone": tmp_path / "b.pth", "detector": tmp_path / "d.pth"}
    DetectStage().run(ctx, tmp_path / "run" / "detect", inputs)
    EvaluateStage().run(ctx, tmp_path / "run" / "evaluate", inputs)
    assert len(RecordedTrainer.made) == 3
    for trainer in RecordedTrainer.made:
        assert trainer.scaling.use_gpu is False and trainer.scaling.resources_per_worker == {"CPU": 1}
        assert trainer.torch.backend == "gloo"
        assert trainer.run.worker_runtime_env["env_vars"]["CUDA_VISIBLE_DEVICES"] == ""
    plan = make_plan(cfg, ["pretrain", "detect", "evaluate"], Target(Machine(True, 8)), ctx=ctx)
    for name in ("pretrain", "detect", "evaluate"):
        rows = dict(plan.stage(name).rows)
        assert rows["devices"].startswith("CPU (") and "Ray Train workers, no GPU, gloo" in rows["processes"]
        assert not [c for c in plan.stage(name).checks if "GPU" in c.message]
