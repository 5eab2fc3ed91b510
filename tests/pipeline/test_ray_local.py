"""The record of a pipeline's local Ray cluster (issue 31): a rerun after a kill -9 of the driver stops the
processes the dead driver left (Ray's agents), and only those it can prove are the recorded ones. Here the
"cluster" is a plain child process; tests/pipeline/test_pipeline_ray.py runs the drill with Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasnet_det.pipeline.ray_local import RECORD_NAME, process_stat, stop_leftovers

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the record reads /proc (Linux)")

# a "driver" that starts a long-lived child, records itself and it, says so, and waits to be killed
DRIVER = """
import subprocess, sys, time
from pathlib import Path
from nasnet_det.pipeline.ray_local import record_local_cluster
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
record_local_cluster(Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    return process_stat(pid) is not None


def start_driver(out: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    return driver, int(driver.stdout.readline())


def test_a_rerun_stops_what_a_killed_driver_left_and_nothing_else(tmp_path: Path):
    driver, child = start_driver(tmp_path)
    try:
        record = json.loads((tmp_path / RECORD_NAME).read_text())
        assert record["driver"]["pid"] == driver.pid and [p["pid"] for p in record["processes"]] == [child]
        assert stop_leftovers(tmp_path) is None and alive(child)  # its driver runs: not ours to stop
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert alive(child)  # orphaned
        line = stop_leftovers(tmp_path)
        assert line is not None and line.startswith("stopped 1 process(es) left by the local Ray cluster of a "
                                                    f"pipeline that was killed (driver pid {driver.pid}")
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child) and not (tmp_path / RECORD_NAME).exists()
        assert stop_leftovers(tmp_path) is None  # nothing left to do
    finally:
        for pid in (driver.pid, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        driver.wait()


def test_a_recorded_pid_now_used_by_another_process_is_left_alone(tmp_path: Path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_stat(other.pid)[1]
        # a record of a dead driver naming other's pid with another start time: pid reuse, not our process
        (tmp_path / RECORD_NAME).write_text(json.dumps({"driver": {"pid": 2 ** 22 + 1, "start": 1},
                                                        "processes": [{"pid": other.pid, "start": start - 1,
                                                                       "name": "python"}]}))
        assert stop_leftovers(tmp_path) is None and alive(other.pid)
        (tmp_path / RECORD_NAME).write_text("{torn")  # a torn record proves nothing
        assert stop_leftovers(tmp_path) is None and alive(other.pid) and not (tmp_path / RECORD_NAME).exists()
    finally:
        other.kill()
        other.wait()
