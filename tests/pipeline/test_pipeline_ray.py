"""The pipeline on a Ray cluster (PIPELINE.BACKEND ray, issue 22): a local Ray cluster on this machine, the
tiny smoke chain with pretraining and detection each as a Ray Train job of two gloo workers, and a worker
killed in the middle of a stage, which Ray Train restarts and the trainer resumes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.pipeline import SMOKE, TINY

from nasnet_det.pipeline import Pipeline, StageError, load_pipeline_config

REPO = Path(__file__).resolve().parents[2]
# two CPUs for two gloo workers of one thread each; the search is the published cell (the search's own Ray
# backend has its tests in tests/search/test_workers.py)
RAY = ["PIPELINE.BACKEND", "ray", "PIPELINE.RAY.NUM_CPUS", "2", "SEARCH.GENOTYPE", "nasnet_a",
       "PRETRAIN.NPROC_PER_NODE", "2", "DETECT.NUM_GPUS", "2"]


def manifest(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "manifest.json").read_text())


def run(out: Path, *extra: str) -> dict[str, str]:
    cfg = load_pipeline_config(SMOKE, [*TINY, *RAY, "OUTPUT_DIR", str(out), *extra])
    return Pipeline(cfg, quiet=True, log=lambda msg: None).run()


def worker_pids(out: Path, stage: str, rank: int) -> list[int]:
    path = out / stage / "ray_workers" / f"rank{rank}.jsonl"
    return [json.loads(ln)["pid"] for ln in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.ray
@pytest.mark.slow  # a real search on the cluster and a Ray Train job (~2 minutes here)
def test_the_search_runs_on_the_pipelines_ray_cluster_and_bad_input_in_a_ray_train_stage_is_not_retried(
        tmp_path: Path):
    pytest.importorskip("ray.train.torch")
    out = tmp_path / "run"
    # bad input read only in the trainer (the config check before the chain cannot see it): one error line,
    # no retries (they could not help)
    with pytest.raises(StageError, match=r"stage 'pretrain': .*no_such_folder"):
        run(out, "SEARCH.GENOTYPE", "", "DETECT.NUM_GPUS", "1",
            "PRETRAIN.OPTS", "['DATA.TRAIN_DIR', 'no_such_folder', 'DATA.VAL_DIR', 'no_such_folder']")
    assert len(worker_pids(out, "pretrain", 0)) == 1 and manifest(out, "pretrain")["status"] == "failed"
    # the search's children ran as Ray tasks of the cluster the pipeline started
    log = (out / "search" / "stage.log").read_text()
    assert "WORKERS.BACKEND ray WORKERS.RAY_ADDRESS" in log and "Connected to Ray cluster" in log
    assert manifest(out, "search")["metrics"]["strategies"]["random"]["ok"] == 4


def test_a_bad_backend_name_or_ray_setting_is_one_line_naming_the_key(tmp_path: Path):
    with pytest.raises(ValueError, match=r"PIPELINE.BACKEND='slurm': expected one of local, ray"):
        load_pipeline_config(SMOKE, ["PIPELINE.BACKEND", "slurm"])
    with pytest.raises(ValueError, match=r"PIPELINE.RAY.MAX_FAILURES must be >= 0, got -1"):
        load_pipeline_config(SMOKE, ["PIPELINE.RAY.MAX_FAILURES", "-1"])


def pretrain_steps_opts(steps: int) -> list[str]:
    """TINY's PRETRAIN.OPTS with ``steps`` pretraining steps instead of 4."""
    return ["PRETRAIN.OPTS", TINY[TINY.index("PRETRAIN.OPTS") + 1].replace("'SOLVER.MAX_STEPS', '4'",
                                                                         f"'SOLVER.MAX_STEPS', '{steps}'")]


def start_ray_pipeline(out: Path, pretrain_steps: int, stderr: int) -> subprocess.Popen:
    """The tiny smoke pipeline on a local Ray cluster in a child process (a kill drill's victim), pretraining for
    ``pretrain_steps`` steps so that it is still running when the drill kills it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nasnet_det.cli", "pipeline", "--config-file", str(SMOKE),
                             "--quiet", *TINY, *RAY, *pretrain_steps_opts(pretrain_steps), "OUTPUT_DIR", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def recorded_snapshot(out: Path, driver: int, timeout_s: float = 60) -> list[tuple[int, int, str]]:
    """The live processes below ``driver`` once the pipeline's record lists every one of them. The record is
    refreshed every second, so a process Ray started in the last second is not in it yet (a kill -9 at that moment
    would leave it running); the drill is about what the record lists, so it waits for the record to catch up."""
    from nasnet_det.pipeline.ray_local import RECORD_NAME

    deadline = time.time() + timeout_s
    while True:
        procs = live_descendants(driver)
        try:
            record = json.loads((out / RECORD_NAME).read_text())
            recorded = {(p["pid"], p["start"]) for p in record["processes"]}
        except (OSError, ValueError, KeyError):  # not written yet, or being replaced
            recorded = set()
        missing = [p for p in procs if (p[0], p[1]) not in recorded]
        if procs and not missing:
            return procs
        assert time.time() < deadline, f"the record never listed {missing}"
        time.sleep(0.3)


@pytest.mark.ray
@pytest.mark.slow  # the whole chain on Ray with a kill -9 drill (also the Ray chain's end-to-end test)
@pytest.mark.timeout(900)  # ~4 minutes on the loaded 2-core machine
def test_the_chain_on_ray_survives_a_worker_killed_mid_stage_and_repeats_nothing_finished(tmp_path: Path):
    pytest.importorskip("ray.train.torch")
    out = tmp_path / "run"
    proc = start_ray_pipeline(out, pretrain_steps=24, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not ((out / "pretrain" / "checkpoints" / "ckpt_00000004.pth").is_file()
                   and worker_pids(out, "pretrain", 1)):
            assert proc.poll() is None and time.time() < deadline, "the pretraining never got to a checkpoint"
            time.sleep(0.2)
        finished_before = {s: (out / s / "manifest.json").stat().st_mtime_ns for s in ("search", "select")}
        os.kill(worker_pids(out, "pretrain", 1)[0], signal.SIGKILL)  # rank 1, in the middle of training
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    m = manifest(out, "pretrain")
    # one pipeline attempt; Ray Train restarted the worker group once and the trainer resumed its checkpoint
    assert m["status"] == "done" and m["attempts"] == 1 and m["ray_worker_starts"] == 2
    assert len(worker_pids(out, "pretrain", 1)) == 2
    log = (out / "pretrain" / "stage.log").read_text()
    assert "resumed from" in log and m["metrics"]["step"] == 24
    steps_logged = [json.loads(ln).get("step") for ln in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged[0] != steps_logged[-1]
    # the stages finished before the kill were not touched; every later one ran once
    assert {s: (out / s / "manifest.json").stat().st_mtime_ns for s in ("search", "select")} == finished_before
    for stage in ("detect", "evaluate", "report"):
        assert manifest(out, stage)["status"] == "done" and manifest(out, stage)["attempts"] == 1
    # the rest of the chain ran on the cluster as it does without a kill: pretraining and detection each a Ray
    # Train job of two gloo workers, the evaluation one worker, every rank its own Ray worker process
    for stage, world in (("pretrain", 2), ("detect", 2), ("evaluate", 1)):
        m = manifest(out, stage)
        assert (m["status"], m["backend"], m["world_size"]) == ("done", "ray", world)
        pids = {p for r in range(world) for p in worker_pids(out, stage, r)[-1:]}
        assert len(pids) == world and os.getpid() not in pids and proc.pid not in pids
    assert (manifest(out, "detect")["ray_worker_starts"], manifest(out, "evaluate")["ray_worker_starts"]) == (1, 1)
    assert manifest(out, "select")["world_size"] == 1
    assert "World size: 2" in (out / "detect" / "stage.log").read_text()  # detectron2 in Ray Train's group
    assert manifest(out, "evaluate")["metrics"]["bbox"]["coco_sample_person"]["AP"] >= 0
    assert (out / "report" / "report.md").is_file()
    # a rerun skips everything (and starts no Ray cluster: nothing to run)
    assert set(run(out, *pretrain_steps_opts(24)).values()) == {"skipped", "disabled"}


def test_the_one_node_and_ray_cluster_configs_load_and_every_stage_config_they_name_loads(tmp_path: Path,
                                                                                        monkeypatch):
    from nasnet_det.pipeline.stages import Context, pipeline_stages

    # the one-node config runs the one-GPU search: it must ship with the repository
    assert (REPO / "configs" / "search" / "one_gpu.yaml").is_file()
    monkeypatch.chdir(tmp_path)
    for name, backend, workers in (("one_node", "local", {"pretrain": 8, "detect": 8, "evaluate": 8}),
                                   ("ray_cluster", "ray", {"pretrain": 32, "detect": 32, "evaluate": 8})):
        cfg = load_pipeline_config(REPO / "configs" / "pipeline" / f"{name}.yaml",
                                   ["OUTPUT_DIR", str(tmp_path / name)])
        ctx = Context(cfg, tmp_path / name)
        assert ctx.backend.name == backend
        for stage in pipeline_stages():
            if stage.name in ("search", "select"):
                stage.settings(ctx)  # the config chain exists and parses
            elif stage.name != "report" and stage.enabled(ctx):
                stage.check(ctx)  # the stage's own config loads with the pipeline's opts
        assert {s.name: s.workers(ctx).world_size for s in pipeline_stages() if s.name in workers} == workers
    one = load_pipeline_config(REPO / "configs" / "pipeline" / "one_node.yaml", [])
    assert not one.CIFAR.ENABLED and one.SEARCH.CONFIG_FILE == "configs/search/one_gpu.yaml"
    assert one.MODEL.NASNET.NUM_CELLS == 4 and one.MODEL.NASNET.PENULTIMATE_FILTERS == 1056


def test_the_report_says_smoke_figures_are_not_accuracy_and_shows_real_ones_plainly(tmp_path: Path):
    from types import SimpleNamespace

    from nasnet_det.pipeline.report import SMOKE_TAG, Report, scale_lines, smoke_reasons
    from nasnet_det.pipeline.stages import pipeline_stages

    def reasons(manifests: dict, trained_on: tuple[str, ...] = ()) -> list[str]:
        """What the stages say of a run with these manifests (the detector's saved config naming
        ``trained_on`` as its DATASETS.TRAIN)."""
        config = tmp_path / "config.yaml"
        config.write_text(f"DATASETS:\n  TRAIN: {list(trained_on)}\n")
        detect = {**manifests.get("detect", {}), "status": "done", "outputs": {"config": str(config)}}
        ctx = SimpleNamespace(abspath=Path)
        return smoke_reasons(Report(ctx, tmp_path, {**manifests, "detect": detect}), pipeline_stages())

    smoke = {"pretrain": {"metrics": {"top1": 50.0, "images": 8}}, "detect": {"metrics": {"iterations": 20}},
             "evaluate": {"metrics": {"bbox": {"coco_sample_val": {"AP": 0.0}}}}}
    assert reasons(smoke) == ["pretrain top-1 is on 8 held-out images", "the detector trained 20 iterations",
                              "AP is on photos of the embedded COCO sample (coco_sample_val)"]
    assert "**not accuracy**" in scale_lines(reasons(smoke))[0] and "checks the chain" in SMOKE_TAG
    # scored on the photos it trained on: a fit, said as such
    fit = {**smoke, "evaluate": {"metrics": {"bbox": {"coco_sample_person": {"AP": 30.0}}}}}
    assert reasons(fit, ("coco_sample_person",))[-1] == ("AP is on the photos the detector trained on "
                                                         "(coco_sample_person): a fit, not generalisation")
    assert not any("trained on" in r for r in reasons(fit, ("coco_sample_train",)))
    real = {"pretrain": {"metrics": {"top1": 74.0, "images": 50000}}, "detect": {"metrics": {"iterations": 90000}},
            "evaluate": {"metrics": {"bbox": {"coco_2017_val": {"AP": 29.0}}}}, "search": None}
    assert reasons(real) == [] and "Scale: **real**" in scale_lines([])[0]


def live_descendants(pid: int) -> list[tuple[int, int, str]]:
    """``(pid, start time, name)`` of every live process below ``pid`` (Linux /proc)."""
    from nasnet_det.pipeline.ray_local import descendants

    return [(p["pid"], p["start"], p["name"]) for p in descendants(pid)]


def still_running(procs: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    from nasnet_det.pipeline.ray_local import process_stat

    return [p for p in procs if (process_stat(p[0]) or (0, None))[1] == p[1]]


@pytest.mark.ray
@pytest.mark.slow  # a kill -9 drill
@pytest.mark.timeout(600)
def test_a_rerun_stops_what_the_local_ray_cluster_of_a_killed_pipeline_left_running(tmp_path: Path):
    pytest.importorskip("ray.train.torch")
    out = tmp_path / "run"
    proc = start_ray_pipeline(out, pretrain_steps=400, stderr=subprocess.DEVNULL)
    ray_procs: list[tuple[int, int, str]] = []
    try:
        deadline = time.time() + 300
        while not worker_pids(out, "pretrain", 1):  # the cluster is up, its agents too, and a job runs on it
            assert proc.poll() is None and time.time() < deadline, "the pretraining never started on Ray"
            time.sleep(0.5)
        ray_procs = recorded_snapshot(out, proc.pid)
        assert any(name.startswith("ray::") for _, _, name in ray_procs), ray_procs  # its agents among them
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as a crash or the OOM killer would
        proc.wait()
        time.sleep(1)
        assert still_running(ray_procs)  # orphaned, for now
        # the rerun (here of a finished stage only) stops them as it starts, and says so
        said: list[str] = []
        cfg = load_pipeline_config(SMOKE, [*TINY, *RAY, *pretrain_steps_opts(400), "OUTPUT_DIR", str(out)])
        assert Pipeline(cfg, quiet=True, log=said.append).run(["search"]) == {"search": "skipped"}
        assert still_running(ray_procs) == []
        line = next(ln for ln in said if "left by the local Ray cluster of a pipeline that was killed" in ln)
        assert f"driver pid {proc.pid}" in line and "ray::" in line
        assert not (out / "ray_local_cluster.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, _, _ in still_running(ray_procs):  # whatever the assertions above left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
