#!/usr/bin/env python
"""``make bench``: run every benchmark script under bench/ (CPU-sized defaults), then write bench/RESULTS.md.

Each script measures ours and a peer in one process and records its rows in bench/results.json (see
_common.record); this runner also records each script's command, exit code, duration and last output lines
(for scripts that print rather than record), and renders everything as bench/RESULTS.md.

    python bench/run_all.py                    # all scripts
    python bench/run_all.py --only bench_eval  # scripts whose name contains a pattern
    python bench/run_all.py --render-only      # just rebuild RESULTS.md from results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import BENCH_DIR, REPO, RESULTS_JSON, machine

RESULTS_MD = BENCH_DIR / "RESULTS.md"
SELF = Path(__file__).name
# gpu_checks.py: bench/gpu.sh's checks, each run with its arguments; estimator_cost.py: a timing table printed for
# docs/search.md (records nothing, ~10 minutes); the others: modules of search_quality.py, not scripts
NOT_BENCHMARKS = {SELF, "gpu_checks.py", "estimator_cost.py", "nds.py", "nds_quality.py", "quality_stats.py",
                  "quality_truth.py"}


def scripts(only: list[str], skip: list[str]) -> list[Path]:
    found = sorted(p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_") and p.name not in NOT_BENCHMARKS)
    if only:
        found = [p for p in found if any(o in p.stem for o in only)]
    return [p for p in found if not any(s in p.stem for s in skip)]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_script(path: Path, timeout: float) -> dict:
    cmd = [sys.executable, str(path.relative_to(REPO))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    print(f"\n=== {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        # A timer, not a check per output line: a script that hangs without printing must be stopped too; the
        # whole process group, so that worker processes holding its output pipe go as well.
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
            rc = proc.wait()
        finally:
            timer.cancel()
        if time.perf_counter() - start >= timeout and rc != 0:
            lines.append(f"[killed after {timeout:.0f} s]")
    except OSError as e:
        rc, lines = -1, [str(e)]
    return {"command": " ".join(["python", str(path.relative_to(REPO))]), "rc": rc,
            "seconds": round(time.perf_counter() - start, 1), "tail": lines[-15:]}


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4g}"
    return str(v)


def _machine_line(m: dict) -> str:
    """Where one section was measured: sections come from different runs (gpu.sh on a GPU machine, make bench
    on a CPU), so each names its own device, threads, load and torch."""
    device = f"GPU {m['cuda']}" if m.get("cuda") else f"CPU {m.get('cpu')} ({m.get('cpu_count')} cores)"
    return (f"{device}, {m.get('torch_threads')} torch threads, 1-min load {_fmt(m.get('loadavg_1min'))}, "
            f"torch {m.get('torch')}")


def render(data: dict) -> str:
    out = ["# Benchmark results", "",
           "Written by `make bench` (bench/run_all.py) from bench/results.json. Each row: ours and a peer measured "
           "in the same process, repeats interleaved, median. **ratio > 1 means ours is better** (faster, or less "
           "memory). The CPU numbers may come from a shared machine (each section gives its 1-minute load): compare "
           "ratios, not absolute values.",
           ""]
    scripts_data = data.get("scripts", {})
    m = next((s["machine"] for s in scripts_data.values() if "machine" in s), None) or machine()
    out += ["## Machine and libraries", "", "| | |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in m.items()]
    for name, s in sorted(scripts_data.items()):
        out += ["", f"## {name}", "", f"Command: `{s['command']}` (finished {s['finished_utc']} UTC)", "",
                f"Machine: {_machine_line(s.get('machine', {}))}", "",
                "| benchmark | metric | ours | peer | peer value | ratio (ours better if > 1) |",
                "|---|---|---|---|---|---|"]
        for r in s["rows"]:
            out.append(f"| {r['bench']} | {r['metric']} | {_fmt(r['ours'])} | {r['peer_name']} | "
                       f"{_fmt(r['peer'])} | **{_fmt(r['ratio'])}x** |")
        if s["rows"]:
            settings = {k: v for k, v in s["rows"][0].items()
                        if k not in ("bench", "metric", "ours", "peer", "peer_name", "higher_is_better", "ratio")}
            out += ["", f"Settings: `{json.dumps(settings, default=str)}`"]
        for note in s.get("notes", []):
            out.append(f"- {note}")
    runs = data.get("runs", {})
    if runs:
        out += ["", "## Last `make bench` run", "", "| script | exit code | seconds |", "|---|---|---|"]
        out += [f"| `{r['command']}` | {r['rc']} | {r['seconds']} |" for r in runs.values()]
        unrecorded = [r for n, r in runs.items() if n not in scripts_data and r["tail"]]
        for r in unrecorded:  # scripts that print their figures instead of recording them
            out += ["", f"### `{r['command']}` (output tail)", "", "```", *r["tail"], "```"]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="run scripts whose name contains one of these")
    parser.add_argument("--skip", nargs="*", default=[], help="skip scripts whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per script")
    parser.add_argument("--render-only", action="store_true")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    failed = []
    if not args.render_only:
        for path in scripts(args.only, args.skip):
            result = run_script(path, args.timeout)
            data = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
            data.setdefault("runs", {})[path.stem] = result
            tmp = RESULTS_JSON.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=1, default=float))
            os.replace(tmp, RESULTS_JSON)
            if result["rc"] != 0:
                failed.append(path.name)
    data = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    RESULTS_MD.write_text(render(data))
    print(f"\nwrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
