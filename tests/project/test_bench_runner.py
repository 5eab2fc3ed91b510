"""bench/run_all.py (``make bench``): a script is stopped at its time limit even when it hangs without output;
RESULTS.md says on which machine each section was measured."""

from __future__ import annotations

import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_run_all_kills_a_silent_hanging_script(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    script = tmp_path / "hangs.py"
    # It prints once, then hangs silently, with a child process holding its output pipe.
    script.write_text("import subprocess, sys, time\nprint('started', flush=True)\n"
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n")
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    start = time.perf_counter()
    result = run_all.run_script(script, timeout=2)
    assert time.perf_counter() - start < 20
    assert result["rc"] != 0
    assert result["tail"][0] == "started" and "killed after 2 s" in result["tail"][-1]


def test_results_md_names_the_machine_of_each_section(monkeypatch):
    """bench/results.json collects sections measured on different machines (gpu.sh on a GPU, make bench on a
    CPU); RESULTS.md must say for each section where it was measured."""
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    def section(machine: dict) -> dict:
        return {"command": "python bench/x.py", "finished_utc": "2026-01-01 00:00:00", "notes": [],
                "machine": machine, "rows": [dict(bench="b", metric="images/s", ours=2.0, peer=1.0, peer_name="p",
                                                  higher_is_better=True, ratio=2.0)]}

    cpu = dict(cpu="AMD EPYC", cpu_count=2, cuda=None, torch="2.x", torch_threads=2, loadavg_1min=3.5)
    gpu = dict(cpu="Intel Xeon", cpu_count=16, cuda="NVIDIA H200", torch="2.x", torch_threads=16, loadavg_1min=0.1)
    md = run_all.render({"scripts": {"bench_model": section(cpu), "bench_model_gpu": section(gpu)}})
    cpu_part, gpu_part = md.split("## bench_model_gpu")
    assert "Machine: CPU AMD EPYC (2 cores), 2 torch threads" in cpu_part.split("## bench_model")[-1]
    assert "Machine: GPU NVIDIA H200, 16 torch threads" in gpu_part


def test_bench_model_amp_is_bf16_as_the_trainers_ship_it(monkeypatch):
    """``--amp`` alone autocasts to bfloat16 on CUDA too (TRAIN.AMP bf16 is what the trainers ship); fp16 is
    asked for by name."""
    import warnings

    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    import bench_model

    parser = bench_model.build_parser()
    with warnings.catch_warnings():  # no GPU here: torch says it disables CUDA autocast; its dtype stays
        warnings.simplefilter("ignore")
        for argv, dtype in ((["--amp"], torch.bfloat16), (["--amp", "fp16"], torch.float16),
                            (["--amp", "--compile"], torch.bfloat16)):
            args = parser.parse_args(["--device", "cuda", *argv])
            assert bench_model.autocast_context(args.device, args.amp).fast_dtype == dtype, argv
    assert not isinstance(bench_model.autocast_context("cuda", parser.parse_args([]).amp), torch.autocast)


def test_make_bench_leaves_out_the_gpu_checks_and_the_modules_of_other_benches(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    names = {p.name for p in run_all.scripts([], [])}
    assert "bench_model.py" in names and "search_quality.py" in names
    assert not names & {"gpu_checks.py", "run_all.py", "nds.py", "nds_quality.py", "quality_stats.py",
                        "quality_truth.py", "estimator_cost.py"}


def test_bench_model_cpu_path_of_the_gpu_commands_runs_and_reports_every_row():
    """bench/gpu.sh runs bench_model.py with --amp bf16 (and the peers in channels_last); the same code on the
    CPU, small: every row comes out, with a finite positive ratio."""
    import math
    import os
    import re
    import subprocess
    import sys

    # the mobile network at one image (its peer's smallest size, 224 px) is the cheapest run of this code: ~16 s
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / "bench_model.py"), "--model", "mobile", "--size", "224",
                           "--batch", "1", "--repeats", "1", "--amp", "--no-record"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = re.findall(r"^nasnet_a_mobile 224px b1 (.+?) +(?:images/s|MiB) .* ratio ([0-9.]+|nan)x", proc.stdout, re.M)
    labels = {label for label, _ in rows}
    assert labels == {"inference (fast)", "inference (as trained)", "train step", "inference peak mem (fast)",
                      "train step peak mem"}, proc.stdout
    assert len(rows) == 8 and all(math.isfinite(float(r)) and float(r) > 0 for _, r in rows), proc.stdout
    assert "ours channels_last" in proc.stdout


def test_every_command_of_gpu_sh_parses_with_its_script(monkeypatch):
    """bench/gpu.sh runs on a GPU machine only, where a wrong flag would cost the whole device session: each of its
    commands must be accepted by the argument parser of the script it calls."""
    import importlib.util
    import re
    import shlex
    import sys

    monkeypatch.syspath_prepend(str(BENCH))
    script_text = (BENCH / "gpu.sh").read_text().replace("\\\n", " ")  # continued lines joined
    commands = [(script, re.split(r"\s(?:\|\||&&|;|\||>)\s|\)", args)[0])  # its own arguments (not a $(...)'s ")")
                for script, args in re.findall(r"\"?\$PY\"? (bench/\w+\.py)([^\n]*)", script_text)]  # $PY or "$PY"
    assert {c for c, _ in commands} >= {"bench/bench_model.py", "bench/bench_latency_lut.py", "bench/gpu_checks.py"}
    for script, args in commands:
        spec = importlib.util.spec_from_file_location(f"gpu_sh_{Path(script).stem}", BENCH.parent / script)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        args = re.split(r"\s\d?>", args)[0]  # up to a redirection (2>&1)
        args = re.sub(r"\$\{\w+:\+([^}]*)\}", r"\1", args)  # ${SET:+--flag "$SET"}: as when it is set
        args = re.sub(r"\$\{?\w+\}?", "1", args)  # a shell variable ("$BUDGET", "$OUT/x") as a value that parses
        module.build_parser().parse_args(shlex.split(args))  # SystemExit (exit 2) on an unknown flag
