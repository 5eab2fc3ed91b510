"""``nasnet-det plan`` (issue 28): what each stage of a pipeline will do, before it runs. The shipped paper-scale
pipelines train with the recipes' effective settings at any GPU count (nasnet_det/engine/scaling.py, the rule the
trainers use), the smoke pipeline keeps its own values, and the checks name what is missing. No training here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasnet_det.engine.scaling import DATASET_IMAGES
from nasnet_det.pipeline import Pipeline, load_pipeline_config
from nasnet_det.pipeline.manifest import settings_hash
from nasnet_det.pipeline.plan import Machine, Target, scale_opts
from nasnet_det.pipeline.plan_cli import main as plan_main
from nasnet_det.pipeline.plan_stages import SEARCH_DEFAULTS, search_settings
from nasnet_det.pipeline.planner import make_plan
from nasnet_det.pipeline.stages import Context, pipeline_stages

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "configs" / "pipeline"
PAPER_SCALE = ("paper.yaml", "one_node.yaml", "ray_cluster.yaml")
NO_GPU = Machine(False, 0, "test: no GPU")
GPUS = Machine(True, 8)  # a machine the paper-scale configs run on: only the data is checked
# --gpus N [--nodes M]: one GPU, one 8-GPU machine, 64 GPUs on one machine and on 8 machines
SCALES = [(1, None), (8, None), (64, None), (8, 8)]

# The recipes (../shared/docs/nasnet-reference.md 5.2-5.3; detectron2's 1x, detection-reference.md)
PRETRAIN_EPOCHS = 250_000 * 1600 / DATASET_IMAGES["imagenet"]  # slim: 250k steps of 1,600 images: ~312.2
PRETRAIN_LR_PER_IMAGE = {"mobile": 2.0 / 1600, "large": 1.5 / 1600}  # slim: 0.04 per 32 images; 0.015 per 16
CIFAR_EPOCHS, CIFAR_LR_PER_IMAGE = 600, 0.025 / 32  # slim cifar_config
DETECT_EPOCHS = 90_000 * 16 / DATASET_IMAGES["coco_2017_train"]  # 1x: 90k iterations of 16 images: ~12.3
DETECT_LR_PER_IMAGE = 0.02 / 16


def plan_of(config: str | Path, *opts: str, gpus: int | None = None, nodes: int | None = None,
            machine: Machine = NO_GPU, stages: list[str] | None = None):
    cfg = load_pipeline_config(PIPELINES / config if isinstance(config, str) else config,
                               [*opts, *scale_opts(gpus, nodes)])
    return make_plan(cfg, stages, Target(machine, gpus, nodes), str(config))


def assert_recipe(plan) -> None:
    """The effective training settings of every training stage are the recipe's (fails for hand-scaled values)."""
    pre = plan.stage("pretrain").values["schedule"]
    network = "large" if "large" in plan.stage("pretrain").rows[0][1] else "mobile"
    assert pre["epochs"] == pytest.approx(PRETRAIN_EPOCHS, rel=1e-3), "pretraining epochs"
    assert pre["lr_per_image"] == pytest.approx(PRETRAIN_LR_PER_IMAGE[network], rel=1e-9), "pretraining LR per image"
    for name in ("cifar", "select"):
        stage = plan.stage(name)
        if stage is None or "schedule" not in stage.values:
            continue
        s = stage.values["schedule"]
        assert s["lr_per_image"] == pytest.approx(CIFAR_LR_PER_IMAGE, rel=1e-9), f"{name} LR per image"
        if name == "cifar":  # SOLVER.EPOCHS passes (each without its last partial step: within 2% of the images)
            assert s["steps"] == CIFAR_EPOCHS * s["steps_per_epoch"] and s["epochs"] == pytest.approx(600, rel=0.02)
    det = plan.stage("detect").values["schedule"]
    assert det["epochs"] == pytest.approx(DETECT_EPOCHS, rel=1e-3), "detection epochs"
    assert det["lr_per_image"] == pytest.approx(DETECT_LR_PER_IMAGE, rel=1e-9), "detection LR per image"
    assert det["ims_per_batch"] % det["processes"] == 0


@pytest.mark.parametrize("gpus,nodes", SCALES)
@pytest.mark.parametrize("config", PAPER_SCALE)
def test_paper_scale_pipelines_train_with_the_recipes_at_any_gpu_count(config, gpus, nodes):
    plan = plan_of(config, gpus=gpus, nodes=nodes)
    assert_recipe(plan)
    world = gpus * (nodes or 1)
    assert plan.stage("pretrain").values["processes"] == world and plan.stage("detect").values["processes"] == world
    assert plan.stage("pretrain").values["schedule"]["global_batch"] == 32 * world  # 32 per GPU: the config's
    assert plan.stage("evaluate").values["processes"] == gpus
    if plan.stage("search").values.get("children"):
        assert plan.stage("search").values["gpus"] <= world


def test_the_old_hand_written_values_fail_the_recipe_check():
    """Before the recipes stated their reference batch, paper.yaml's pretraining took BASE_LR 2.0 as written at
    8 x 32 = 256 images per step for 250k steps (~50 epochs), and ray_cluster.yaml retyped the detection LR and
    iterations for 32 images: both now read as the wrong recipe."""
    with pytest.raises(AssertionError, match="pretraining"):
        assert_recipe(plan_of("paper.yaml", "PRETRAIN.OPTS", "['SOLVER.REFERENCE_BATCH_SIZE', '0']", gpus=8))
    old_ray_detect = "['SOLVER.IMS_PER_BATCH', '32', 'SOLVER.BASE_LR', '0.04', 'SOLVER.MAX_ITER', '45000', " \
                     "'SOLVER.STEPS', '(30000, 40000)']"
    with pytest.raises(AssertionError, match="detection"):
        assert_recipe(plan_of("ray_cluster.yaml", "DETECT.OPTS", old_ray_detect))


@pytest.mark.parametrize("processes", [1, 8, 64])
@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs/detection").glob("faster_rcnn_*.yaml")))
def test_every_detection_recipe_is_the_1x_schedule_at_any_gpu_count(config, processes):
    preset = "nasnet_a_large" if "large" in config else "nasnet_a_mobile"
    plan = plan_of("paper.yaml", "DETECT.CONFIG_FILE", f"configs/detection/{config}", "MODEL.NASNET.PRESET", preset,
                   gpus=processes, stages=["detect"])
    s = plan.stage("detect").values["schedule"]
    assert s["epochs"] == pytest.approx(DETECT_EPOCHS, rel=1e-3)
    assert s["lr_per_image"] == pytest.approx(DETECT_LR_PER_IMAGE, rel=1e-9)
    assert s["ims_per_batch"] == processes * (1 if "large" in config else 2)  # per GPU: the configs' choice
    assert [c for c in plan.checks if c.level == "FAIL" and "batch" in c.message] == []


def test_the_smoke_pipeline_keeps_its_own_values_and_passes_on_a_cpu():
    plan = plan_of("smoke.yaml")
    pre, det = plan.stage("pretrain").values["schedule"], plan.stage("detect").values["schedule"]
    assert (pre["lr"], pre["steps"], pre["global_batch"], pre["processes"]) == (0.02, 30, 8 * 2 * 2, 2)
    assert (det["lr"], det["max_iter"], det["ims_per_batch"], det["steps"]) == (0.05, 450, 4, [350])
    search = plan.stage("search").values
    assert (search["children"], search["child_steps"]) == (16, 20)
    assert plan.stage("cifar").rows == [("runs", "no: disabled (CIFAR.ENABLED False)")]
    assert not plan.failed  # everything runs on the CPU on purpose; the search's auto device only warns
    assert [c.stage for c in plan.checks] == ["search"]


def test_the_cli_prints_a_table_per_stage_writes_json_and_exits_1_on_a_fail(tmp_path: Path):
    """One run of the real command line (tools/plan_pipeline.py = nasnet-det plan), from an empty folder: no data
    there, so the data checks FAIL whatever the machine."""
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools/plan_pipeline.py"), "--config-file",
                           str(PIPELINES / "paper.yaml"), "--gpus", "8", "--json", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, env={**_env(), "DETECTRON2_DATASETS": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr
    for stage in ("search", "select", "cifar", "pretrain", "detect", "evaluate", "report"):
        assert f"\n{stage}\n" in proc.stdout
    assert "0.32 = BASE_LR 2 x 256/1600" in proc.stdout and "312.2 of 1,281,167" in proc.stdout
    assert f"FAIL detect: DATASETS.TRAIN coco_2017_train: {tmp_path}/coco/train2017" in proc.stdout
    data = json.loads(out.read_text())
    assert data["result"] == "FAIL" and data["target"] == {"gpus_per_machine": 8, "machines": None,
                                                           "this_machine": False}
    assert data["stages"]["pretrain"]["schedule"]["lr"] == pytest.approx(0.32)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}


def test_exit_codes_0_without_a_fail_and_2_for_bad_input(capsys):
    assert plan_main(["--config-file", str(PIPELINES / "smoke.yaml")]) == 0
    assert plan_main(["--config-file", str(PIPELINES / "smoke.yaml"), "PRETRAIN.NPROC_PER_NODE"]) == 2
    assert "error: config overrides must be KEY VALUE pairs" in capsys.readouterr().err
    assert plan_main(["--config-file", str(PIPELINES / "smoke.yaml"), "PRETRAIN.NOT_A_KEY", "1"]) == 2
    assert "PRETRAIN.NOT_A_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        plan_main(["--config-file", str(PIPELINES / "smoke.yaml"), "--gpus", "0"])
    assert e.value.code == 2


def fails(plan, stage: str) -> list[str]:
    return [c.message for c in plan.checks if c.level == "FAIL" and c.stage == stage]


def test_missing_or_flat_imagenet_folders_are_fails_naming_the_path(tmp_path: Path):
    train, val = tmp_path / "imagenet/train", tmp_path / "imagenet/val"
    opts = ("PRETRAIN.OPTS", f"['DATA.TRAIN_DIR', '{train}', 'DATA.VAL_DIR', '{val}']")
    missing = fails(plan_of("paper.yaml", *opts, machine=GPUS, stages=["pretrain"]), "pretrain")
    assert any(f"DATA.TRAIN_DIR {train} does not exist" in m for m in missing)
    assert any(f"DATA.VAL_DIR {val} does not exist" in m for m in missing)
    for c in ("n01440764", "n01443537"):
        (train / c).mkdir(parents=True)
        for i in range(3):
            (train / c / f"{c}_{i}.JPEG").write_bytes(b"")
    val.mkdir()
    for i in range(4):  # ILSVRC-2012's val as it comes: one flat folder
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(b"")
    plan = plan_of("paper.yaml", *opts, machine=GPUS, stages=["pretrain"])
    assert fails(plan, "pretrain") == [f"DATA.VAL_DIR {val} is a flat folder of 4 images, not one folder per class: "
                                       "sort the validation images into their classes' folders (the usual valprep.sh "
                                       "step, by the devkit's labels)"]
    assert plan.stage("pretrain").values["data"]["train_images"] == 6  # counted: the epochs follow the folder
    for i, c in enumerate(("n01440764", "n09999999")):  # sorted, but into a class train does not have
        (val / c).mkdir()
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").rename(val / c / f"ILSVRC2012_val_{i:08d}.JPEG")
    plan = plan_of("paper.yaml", *opts, machine=GPUS, stages=["pretrain"])
    assert "the names must be the same" in fails(plan, "pretrain")[0]
    (val / "n09999999").rename(val / "n01443537")
    assert fails(plan_of("paper.yaml", *opts, machine=GPUS, stages=["pretrain"]), "pretrain") == []


def test_missing_coco_under_detectron2_datasets_is_a_fail_naming_the_path(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    plan = plan_of("paper.yaml", machine=GPUS, stages=["detect", "evaluate"])
    assert f"{tmp_path}/coco/train2017" in fails(plan, "detect")[0]
    assert f"{tmp_path}/coco/annotations/instances_val2017.json" in fails(plan, "evaluate")[0]
    for split in ("train2017", "val2017"):
        (tmp_path / "coco" / split).mkdir(parents=True)
        (tmp_path / "coco" / split / "000000000009.jpg").write_bytes(b"")
    (tmp_path / "coco/annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / f"coco/annotations/instances_{split}2017.json").write_text("{}")
    plan = plan_of("paper.yaml", machine=GPUS, stages=["detect", "evaluate"])
    assert fails(plan, "detect") == fails(plan, "evaluate") == []
    found = dict(plan.stage("detect").rows)["data"]
    assert f"coco_2017_train: {tmp_path / 'coco/train2017'} (1 files) + instances_train2017.json" == found


def test_missing_cifar10_is_a_fail_of_each_stage_that_reads_it(tmp_path: Path):
    plan = plan_of("paper.yaml", "CIFAR.OPTS", f"['DATA.SOURCE', 'folder:{tmp_path}']", machine=GPUS,
                   stages=["cifar"])
    assert fails(plan, "cifar") == [f"DATA.SOURCE folder:{tmp_path}: {tmp_path}/cifar-10-batches-py lacks "
                                    "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch; "
                                    "expected CIFAR-10 in torchvision's layout (the python batches data_batch_1..5 "
                                    "and test_batch)"]
    plan = plan_of("paper.yaml", "SEARCH.OPTS", f"['DATA.SOURCE', 'folder:{tmp_path}']", machine=GPUS,
                   stages=["search"])
    assert "cifar-10-batches-py lacks" in fails(plan, "search")[0]


def test_a_stage_that_would_run_on_the_cpu_fails_here_and_warns_for_another_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    here = make_plan(load_pipeline_config(PIPELINES / "paper.yaml"), ["pretrain", "detect"])
    assert here.target.this_machine and not here.target.machine.cuda
    assert fails(here, "pretrain")[0].startswith("TRAIN.DEVICE auto would train on the CPU here (8 processes planned "
                                                 "for GPUs): ")
    assert fails(here, "detect")[0].startswith("MODEL.DEVICE cuda, but CUDA is not usable here: ")
    there = plan_of("paper.yaml", gpus=8, machine=Machine.this_one(), stages=["pretrain"])
    assert [c.line() for c in there.checks if "GPU" in c.message] == [
        "WARN pretrain: planned for 8 GPUs per machine; this machine, without a usable GPU, cannot run it"]


def test_more_processes_per_machine_than_its_gpus_is_a_fail(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    plan = make_plan(load_pipeline_config(PIPELINES / "paper.yaml"), ["pretrain", "evaluate"])
    assert fails(plan, "pretrain")[0] == ("PRETRAIN.NPROC_PER_NODE 8 processes per machine, but this machine has 2 "
                                          "usable GPUs")
    assert fails(plan, "evaluate")[0].startswith("EVALUATE.NUM_GPUS 8 processes per machine")
    ok = make_plan(load_pipeline_config(PIPELINES / "paper.yaml", scale_opts(2, None)), ["pretrain"])
    assert [m for m in fails(ok, "pretrain") if "GPU" in m] == []


def test_ray_workers_without_a_gpu_fail_a_stage_that_should_run_on_gpus():
    plan = plan_of("paper.yaml", "PIPELINE.BACKEND", "ray", "PIPELINE.RAY.GPUS_PER_WORKER", "0", gpus=8,
                   stages=["pretrain"])
    assert fails(plan, "pretrain")[0].startswith("PIPELINE.RAY.GPUS_PER_WORKER 0: its 8 Ray Train workers get no GPU")
    for config in PAPER_SCALE:  # the paper-scale configs ask Ray for GPUs
        plan = plan_of(config, "PIPELINE.BACKEND", "ray", gpus=8)
        assert not [c for c in plan.checks if "GPUS_PER_WORKER" in c.message]


def warns(plan, stage: str) -> list[str]:
    return [c.message for c in plan.checks if c.level == "WARN" and c.stage == stage]


def test_a_ray_plan_warns_when_the_cluster_has_too_few_gpus_or_none_for_auto():
    """PIPELINE.BACKEND ray: a stage waits for GPUs the cluster lacks (WARN with the numbers), GPUS_PER_WORKER -1 on
    a cluster without GPUs trains TRAIN.DEVICE auto on the CPU (WARN), and a device-cpu stage asks for no GPU."""
    here = plan_of("paper.yaml", "PIPELINE.BACKEND", "ray", "PIPELINE.RAY.GPUS_PER_WORKER", "-1",
                   stages=["pretrain", "detect"])  # the local cluster on this machine, without a GPU
    assert warns(here, "pretrain") == ["PIPELINE.RAY.GPUS_PER_WORKER -1 (auto) and the local Ray cluster on this "
                                       "machine has no GPU: its 8 Ray Train workers train on the CPU (TRAIN.DEVICE "
                                       "auto)"]
    assert "Ray Train workers, no GPU, gloo" in dict(here.stage("pretrain").rows)["processes"]
    assert warns(here, "detect") == ["8 Ray Train workers x 1 GPU(s) (PIPELINE.RAY.GPUS_PER_WORKER -1) need 8 GPUs "
                                     "but the local Ray cluster on this machine has 0: the stage waits until GPU "
                                     "nodes join"]
    short = plan_of("paper.yaml", "PIPELINE.BACKEND", "ray", "PIPELINE.RAY.GPUS_PER_WORKER", "2", gpus=4,
                    stages=["pretrain"])
    assert warns(short, "pretrain") == ["4 Ray Train workers x 2 GPU(s) (PIPELINE.RAY.GPUS_PER_WORKER 2) need 8 GPUs "
                                        "but the planned cluster (--gpus x --nodes) has 4: the stage waits until GPU "
                                        "nodes join"]
    elsewhere = plan_of("paper.yaml", "PIPELINE.BACKEND", "ray", "PIPELINE.RAY.ADDRESS", "head:6379",
                        stages=["pretrain"])
    assert warns(elsewhere, "pretrain") == [] and "GPUs, nccl" in dict(elsewhere.stage("pretrain").rows)["processes"]
    smoke = plan_of("smoke.yaml", "PIPELINE.BACKEND", "ray", machine=GPUS, stages=["pretrain", "detect"])
    for name in ("pretrain", "detect"):
        assert "Ray Train workers, no GPU, gloo" in dict(smoke.stage(name).rows)["processes"]
        assert not [m for m in fails(smoke, name) + warns(smoke, name) if "GPU" in m]


def test_a_detection_batch_the_processes_cannot_share_is_a_fail():
    plan = plan_of("paper.yaml", "DETECT.OPTS", "['SOLVER.REFERENCE_WORLD_SIZE', '0']", gpus=3, stages=["detect"])
    assert [m for m in fails(plan, "detect") if "batch" in m] == [
        "the global batch of 16 images per iteration (SOLVER.IMS_PER_BATCH 16, REFERENCE_WORLD_SIZE 0) is not "
        "divisible by the 3 processes"]


def test_expected_time_follows_the_stated_throughput():
    plan = plan_of("paper.yaml", "PRETRAIN.IMAGES_PER_SECOND_PER_GPU", "250.0", "PRETRAIN.THROUGHPUT_SOURCE",
                   "assumed: a test", "SEARCH.GPU_HOURS_PER_CHILD", "0.5", "SEARCH.THROUGHPUT_SOURCE",
                   "measured: a test", gpus=8, stages=["search", "pretrain"])
    images = 1_562_500 * 256
    assert plan.stage("pretrain").values["expected"]["gpu_hours"] == pytest.approx(images / 250 / 3600)
    assert plan.stage("pretrain").values["expected"]["wall_hours"] == pytest.approx(images / 250 / 3600 / 8)
    assert plan.stage("search").values["expected"] == {"wall_hours": 20_000 * 0.5 / 8, "gpu_hours": 10_000.0,
                                                       "device_hours": 10_000.0}
    unknown = plan_of("paper.yaml", "PRETRAIN.IMAGES_PER_SECOND_PER_GPU", "0.0", stages=["pretrain"])
    assert dict(unknown.stage("pretrain").rows)["expected time"].startswith("unknown")
    with pytest.raises(ValueError, match="PRETRAIN.THROUGHPUT_SOURCE must say where"):
        plan_of("paper.yaml", "PRETRAIN.IMAGES_PER_SECOND_PER_GPU", "250.0", "PRETRAIN.THROUGHPUT_SOURCE", "")


@pytest.mark.parametrize("config", [*PAPER_SCALE, "smoke.yaml"])
def test_every_shipped_throughput_is_marked_assumed(config):
    from nasnet_det.pipeline.throughput import SOURCE_KEY, THROUGHPUT_KEYS

    cfg = load_pipeline_config(PIPELINES / config)
    for node, (key, _) in THROUGHPUT_KEYS.items():
        if cfg[node][key] > 0:  # no GPU figure has been measured in this project
            assert cfg[node][SOURCE_KEY].startswith("assumed: "), f"{config}: {node}.{SOURCE_KEY}"


def test_throughput_keys_change_no_stage_settings_hash(tmp_path: Path):
    base = load_pipeline_config(PIPELINES / "paper.yaml", ["OUTPUT_DIR", str(tmp_path)])
    other = load_pipeline_config(PIPELINES / "paper.yaml", [
        "OUTPUT_DIR", str(tmp_path), "SEARCH.GPU_HOURS_PER_CHILD", "9.0", "SEARCH.THROUGHPUT_SOURCE", "measured: x",
        *(x for n in ("SELECT", "CIFAR", "PRETRAIN", "DETECT", "EVALUATE")
          for x in (f"{n}.IMAGES_PER_SECOND_PER_GPU", "7.0", f"{n}.THROUGHPUT_SOURCE", "measured: x"))])
    a, b = Context(base, tmp_path), Context(other, tmp_path)
    for stage in pipeline_stages():
        assert settings_hash(stage.settings(a)) == settings_hash(stage.settings(b)), stage.name


def test_the_pipeline_prints_and_stores_the_plan_and_an_older_run_still_skips(tmp_path: Path):
    """A run keeps its plan in OUTPUT_DIR/plan.json and in each stage's manifest; a folder written before plans
    existed (no plan anywhere) and a changed throughput figure still skip every finished stage."""
    lines: list[str] = []

    def run(*extra: str) -> dict[str, str]:
        cfg = load_pipeline_config(PIPELINES / "smoke.yaml", ["OUTPUT_DIR", str(tmp_path), "SEARCH.GENOTYPE",
                                                              "nasnet_a", *extra])
        return Pipeline(cfg, quiet=True, log=lines.append, config_file="smoke.yaml").run(["search", "select"])

    assert run() == {"search": "ran", "select": "ran"}
    assert lines[1].startswith("plan of smoke.yaml for this machine") and "\nselect\n" in lines[1]
    assert json.loads((tmp_path / "plan.json").read_text())["stages"]["select"]["stage"] == "select"
    for stage in ("search", "select"):
        m = json.loads((tmp_path / stage / "manifest.json").read_text())
        assert m["plan"]["stage"] == stage
        del m["plan"]  # as a run before this change wrote it
        (tmp_path / stage / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "plan.json").unlink()
    assert run("SEARCH.GPU_HOURS_PER_CHILD", "3.0", "SEARCH.THROUGHPUT_SOURCE", "assumed: x") == {
        "search": "skipped", "select": "skipped"}
    assert (tmp_path / "plan.json").is_file()


@pytest.mark.parametrize("config", ["paper.yaml", "one_gpu.yaml", "smoke.yaml", "base.yaml"])
def test_the_search_keys_the_plan_reads_are_what_the_search_loads(config, tmp_path: Path):
    """nasnet_det reads the search YAML without importing search: the same values, defaults included."""
    from nasnet_det.utils.mapping import lookup
    from search.config import get_cfg_defaults
    from search.config import load_cfg as load_search_cfg

    defaults = get_cfg_defaults()
    assert {k: lookup(defaults, k)[1] for k in SEARCH_DEFAULTS} == SEARCH_DEFAULTS
    opts = ["CHILD.EPOCHS", "3", "WORKERS.NUM_WORKERS", "5"]
    cfg = load_pipeline_config(PIPELINES / "smoke.yaml", ["SEARCH.CONFIG_FILE", f"configs/search/{config}",
                                                          "SEARCH.OPTS", str(opts)])
    searched = load_search_cfg(str(REPO / "configs/search" / config), opts)
    assert search_settings(cfg) == {k: lookup(searched, k)[1] for k in SEARCH_DEFAULTS}


def test_the_searchs_own_opts_win_over_the_backends_as_in_the_run():
    """SearchStage.run passes [*backend.search_opts(), *SEARCH.OPTS]: the plan reads them in that order."""
    cfg = load_pipeline_config(PIPELINES / "smoke.yaml", ["PIPELINE.BACKEND", "ray", "SEARCH.OPTS",
                                                          "['WORKERS.BACKEND', 'local']"])
    assert search_settings(cfg)["WORKERS.BACKEND"] == "local"
    cfg = load_pipeline_config(PIPELINES / "smoke.yaml", ["PIPELINE.BACKEND", "ray"])
    assert search_settings(cfg)["WORKERS.BACKEND"] == "ray"


def test_search_children_on_the_cpu_here_fail_when_the_config_states_gpu_hours():
    """Planning for this machine, without a GPU: CHILD.DEVICE auto with SEARCH.GPU_HOURS_PER_CHILD > 0 (the config
    expects GPUs) is a FAIL; without a stated GPU throughput it stays a WARN; planned for elsewhere, a WARN."""
    auto = ["SEARCH.OPTS", "['CHILD.DEVICE', 'auto', 'WORKERS.BACKEND', 'local']"]
    stated = plan_of("paper.yaml", *auto, "SEARCH.GPU_HOURS_PER_CHILD", "2.4", stages=["search"])
    assert [m for m in fails(stated, "search") if "CPU" in m] == [
        "CHILD.DEVICE auto: the children train on the CPU here (2 CPU workers); SEARCH.GPU_HOURS_PER_CHILD 2.4 is "
        "GPU time: test: no GPU"]
    unstated = plan_of("paper.yaml", *auto, "SEARCH.GPU_HOURS_PER_CHILD", "0.0", stages=["search"])
    assert [m for m in fails(unstated, "search") if "CPU" in m] == []
    assert [m for m in warns(unstated, "search") if "CPU" in m] != []
    elsewhere = plan_of("paper.yaml", *auto, "SEARCH.GPU_HOURS_PER_CHILD", "2.4", gpus=8, stages=["search"])
    assert [m for m in fails(elsewhere, "search") if "CPU" in m or "GPU" in m] == []


def test_the_pipelines_plan_lists_the_image_folders_without_counting_them(tmp_path: Path, monkeypatch):
    """A pipeline's start must not walk ImageNet's 1.28M files: the class folders are listed, each checked for an
    image, and the epochs use ILSVRC-2012's published size; `nasnet-det plan` still counts."""
    from nasnet_det.pipeline import plan_data

    train, val = tmp_path / "imagenet/train", tmp_path / "imagenet/val"
    for root in (train, val):
        for c in ("n01440764", "n01443537"):
            (root / c / "nested").mkdir(parents=True)
            for i in range(3):
                (root / c / "nested" / f"{c}_{i}.JPEG").write_bytes(b"")
    opts = ("PRETRAIN.OPTS", f"['DATA.TRAIN_DIR', '{train}', 'DATA.VAL_DIR', '{val}']")
    cfg = load_pipeline_config(PIPELINES / "paper.yaml", list(opts))
    counted = make_plan(cfg, ["pretrain"], Target(GPUS))
    assert counted.stage("pretrain").values["data"]["train_images"] == 6

    def no_walk(*args):
        raise AssertionError("the pipeline's plan counted every image")

    monkeypatch.setattr(plan_data, "_count_images", no_walk)
    quick = make_plan(cfg, ["pretrain"], Target(GPUS), count_images=False)
    data = quick.stage("pretrain").values["data"]
    assert data["train_images"] == DATASET_IMAGES["imagenet"] and fails(quick, "pretrain") == []
    assert f"train {train}: 2 class folders, each with images (not counted)" in data["summary"]
    for f in (train / "n01443537" / "nested").iterdir():
        f.unlink()
    empty = make_plan(cfg, ["pretrain"], Target(GPUS), count_images=False)
    assert fails(empty, "pretrain") == [f"DATA.TRAIN_DIR {train}: 1 class folder(s) without images (e.g. "
                                        "n01443537); ImageFolder refuses an empty class"]


def test_a_plan_the_pipeline_cannot_make_is_one_warning_and_finished_stages_still_skip(tmp_path: Path, monkeypatch):
    from nasnet_det.pipeline import planner

    lines: list[str] = []

    def run() -> dict[str, str]:
        cfg = load_pipeline_config(PIPELINES / "smoke.yaml", ["OUTPUT_DIR", str(tmp_path), "SEARCH.GENOTYPE",
                                                              "nasnet_a"])
        return Pipeline(cfg, quiet=True, log=lines.append, config_file="smoke.yaml").run(["search", "select"])

    assert run() == {"search": "ran", "select": "ran"}

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/imagenet/train")

    monkeypatch.setattr(planner, "make_plan", unreadable)
    lines.clear()
    assert run() == {"search": "skipped", "select": "skipped"}
    assert [ln for ln in lines if "WARNING" in ln or ln.startswith("plan of")] == [
        "[pipeline] WARNING: no plan (PermissionError: [Errno 13] Permission denied: '/data/imagenet/train'); the "
        "stages run without it"]


def test_the_plan_reads_strategy_names_in_any_case_as_the_search_does():
    """SEARCH.STRATEGY OneShot runs the weight-sharing search: no children trained one by one."""
    plan = plan_of("smoke.yaml", "SEARCH.OPTS", "['SEARCH.STRATEGY', 'OneShot']", stages=["search"])
    assert plan.stage("search").values["strategies"] == ["oneshot"]
    assert "children" not in plan.stage("search").values
