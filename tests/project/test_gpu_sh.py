"""bench/gpu.sh, the first run on a GPU machine, checked on a CPU: its dry run (every step with its cap, the caps
within the budget), its arguments, a real run stopping at step 1 in one line without a usable GPU, and the step
runner itself (a failed step recorded and the next run, one results file) with a stand-in python that pretends
there is a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU_SH = REPO / "bench" / "gpu.sh"
STEPS = ["env", "gpu_tests", "cls_resume", "det_resume", "model_mobile", "model_large", "latency", "workers"]


def gpu_sh(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_SH), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PY": sys.executable, **env})


def test_dry_run_lists_every_step_with_its_cap_within_the_budget():
    proc = gpu_sh("--dry-run")
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^(\d) (\w+) +(\d+) s  (.+)$", proc.stdout, re.M)
    assert [name for _, name, _, _ in rows] == STEPS
    assert all("[skipped" not in cmd for *_, cmd in rows)
    total = re.search(r"= (\d+) s <= budget 540 s$", proc.stdout, re.M)
    assert total, proc.stdout
    caps = sum(int(cap) for _, _, cap, _ in rows)
    assert caps + 5 * len(rows) + 20 + 10 == int(total.group(1)) <= 540  # + kill grace, GPU check, report


def test_the_gpu_tests_step_collects_only_the_files_that_mark_tests_gpu():
    proc = gpu_sh("--dry-run")
    marked = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py")
                    if re.search(r"mark\.gpu\b", p.read_text()))
    assert marked, "no gpu-marked test left: the step would fall back to the whole suite"
    (row,) = re.findall(r"^2 gpu_tests +\d+ s  (.+)$", proc.stdout, re.M)
    assert row == f"{sys.executable} -m pytest -q -p no:cacheprovider -m gpu {' '.join(marked)}"


def test_dry_run_with_a_smaller_budget_or_skips_drops_the_later_steps():
    proc = gpu_sh("--dry-run", "--budget", "200", "--skip", "gpu_tests")
    assert proc.returncode == 0, proc.stderr
    state = dict(re.findall(r"^\d (\w+) .*?(?:\[(skipped[^\]]*)\])?$", proc.stdout, re.M))
    assert state["env"] == "" and state["gpu_tests"] == "skipped (--skip)"
    assert state["cls_resume"] == "" and state["workers"] == "skipped (over budget)"
    total = int(re.search(r"= (\d+) s <= budget 200 s", proc.stdout).group(1))
    assert total <= 200


@pytest.mark.parametrize("args, message", [
    (["--skip", "env"], "--skip env: step 1 cannot be skipped"),
    (["--skip", "nope"], "--skip: unknown step 'nope'"),
    (["--budget", "0"], "--budget needs a number of seconds > 0"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    proc = gpu_sh(*args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_without_a_usable_gpu_a_real_run_stops_at_step_1_in_one_line(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES='' hides any GPU, so this holds on a GPU machine too; nothing is written."""
    from nasnet_det.engine.devices import cuda_unavailable_reason

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "results"
    proc = gpu_sh("--no-setup", "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"bench/gpu.sh: stopped at step 1 (env): {cuda_unavailable_reason()}"]
    assert not out.exists()


def test_a_run_records_each_step_in_one_results_file(tmp_path):
    """A stand-in python answers the GPU check ("fake-gpu"), fails pytest, runs every other step at once, and
    runs the real report: the failed step is recorded and the steps after it run; one results file and one log."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *"gpu_checks.py gate"*) echo fake-gpu ;;
  *"-m pytest"*) echo "1 failed"; exit 1 ;;
  *"gpu_checks.py report"*) exec {sys.executable} "$@" ;;
  *) echo "ran: $*" ;;
esac
""")
    fake.chmod(0o755)
    out = tmp_path / "results"
    proc = gpu_sh("--no-setup", "--out", str(out), "--skip", "latency", PY=str(fake))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].endswith("-fake-gpu.json") and files[1].endswith("-fake-gpu.log"), files
    results = json.loads((out / files[0]).read_text())
    status = {s["step"]: s["status"] for s in results["steps"]}
    assert status == {**dict.fromkeys(STEPS, "ok"), "gpu_tests": "failed (exit 1)", "latency": "skipped (--skip)"}
    assert results["run"]["budget_s"] == 540 and results["run"]["log"].endswith(files[1])
    assert f"results: {out / files[0]}" in proc.stdout
    log = (out / files[1]).read_text()
    assert "ran: bench/bench_model.py --device cuda --model mobile" in log and "=== 8 workers: ok" in log


def gpu_checks(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu_checks

    return gpu_checks


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_train_resume_runs_the_clis_with_their_documented_flags_and_valid_keys(monkeypatch, tmp_path, task):
    """Both runs of step 3 parse with the CLI's own parser, and their overrides make a valid config (on a CPU:
    TRAIN.DEVICE / MODEL.DEVICE cuda is only checked when training starts)."""
    checks = gpu_checks(monkeypatch)
    args = checks.train_defaults(checks.build_parser().parse_args(["train-resume", "--task", task]))
    first, second = checks.train_commands(args, tmp_path)
    assert first[1] == ("tools/train_cifar.py" if task == "classification" else "tools/train_net.py")
    assert "--no-resume" in first and "--no-resume" not in second
    if task == "classification":
        from nasnet_det.classification.cli import build_parser
        from nasnet_det.classification.config import load_config

        for cmd in (first, second):
            cli = build_parser().parse_args(cmd[2:])
            cfg = load_config(cli.config_file, cli.opts)
        assert "--resume" in second
        assert (cfg.TRAIN.DEVICE, cfg.TRAIN.AMP, cfg.SOLVER.MAX_STEPS) == ("cuda", "bf16", args.steps)
        assert 0 < cfg.TRAIN.CHECKPOINT_PERIOD < cfg.SOLVER.MAX_STEPS
    else:
        from nasnet_det.config import load_cfg
        from nasnet_det.detection.config import get_nasnet_cfg
        from nasnet_det.detection.train import argument_parser

        for cmd in (first, second):
            cli = argument_parser().parse_args(cmd[2:])
            cfg = load_cfg(get_nasnet_cfg(), cli.config_file, cli.opts)
        assert (cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.MAX_ITER) == ("cuda", True, args.steps)
        assert cfg.OUTPUT_DIR == str(tmp_path) and 0 < cfg.SOLVER.CHECKPOINT_PERIOD < cfg.SOLVER.MAX_ITER


def test_a_resumed_detection_run_is_judged_on_its_training_rows(monkeypatch, tmp_path):
    """metrics.json ends with the evaluation's row (iteration MAX_ITER, no loss): the last trained iteration is
    MAX_ITER - 1; a run that does not say it resumed fails."""
    checks = gpu_checks(monkeypatch)
    rows = [{"iteration": i, "total_loss": 6.0 - i / 10} for i in range(8)] + [{"iteration": 8, "bbox/AP": 0.0}]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "model_final.pth").write_bytes(b"")
    log = "INFO nasnet_det.detection.train]: resuming from iteration 3 in out (rerun with --no-resume to start over)"
    seen, why = checks.verify_resumed_run("detection", 8, tmp_path, log)
    assert why == "" and seen["resumed_at"] == 3 and seen["final_iteration"] == 7
    assert "did not say it resumed" in checks.verify_resumed_run("detection", 8, tmp_path, "no such line")[1]
    assert "expected iteration 9" in checks.verify_resumed_run("detection", 10, tmp_path, log)[1]
