"""The processes of the local Ray cluster a pipeline starts (``PIPELINE.RAY.ADDRESS ""``), recorded in
``OUTPUT_DIR/ray_local_cluster.json``, so that the next run stops what a killed pipeline left.

A kill -9 of the pipeline's driver takes Ray's GCS and raylet down with it, but their agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) notice only a minute or two later. The record (refreshed every second: a /proc walk of a
few milliseconds) names the driver and every process below it
(Linux: ``/proc``) by pid and start time: a later run stops a recorded process only when its driver is gone and the
pid still belongs to the process that was recorded (same start time), never a process that merely reuses the pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from nasnet_det.utils.io import atomic_write

RECORD_NAME = "ray_local_cluster.json"


def process_stat(pid: int) -> tuple[int, int, str] | None:
    """``(parent pid, start time in clock ticks after boot, name)`` of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    if rest[0] == "Z":  # a zombie has exited: nothing to stop
        return None
    return int(rest[1]), int(rest[19]), name


def descendants(pid: int) -> list[dict[str, Any]]:
    """Every live process below ``pid``: ``{"pid", "start", "name"}``."""
    children: dict[int, list[tuple[int, int, str]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            st = process_stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append((int(entry), st[1], st[2]))
    out, todo = [], [pid]
    while todo:
        for child, start, name in children.get(todo.pop(), []):
            out.append({"pid": child, "start": start, "name": name})
            todo.append(child)
    return out


def _same(proc: dict[str, Any]) -> bool:
    st = process_stat(int(proc["pid"]))
    return st is not None and st[1] == proc.get("start")


def record_local_cluster(out: Path) -> None:
    """Record this process (the driver) and its descendants (the local Ray cluster it started) in ``out``."""
    me = os.getpid()
    st = process_stat(me)
    if st is None:  # no /proc (not Linux): nothing can be proven later, so nothing is recorded
        return
    atomic_write(out / RECORD_NAME, json.dumps({"driver": {"pid": me, "start": st[1]},
                                                "processes": descendants(me)}, indent=2) + "\n")


class LocalClusterRecord:
    """Keeps ``out/ray_local_cluster.json`` up to date while this process runs a local Ray cluster: written at
    :meth:`start` and again every ``period_s`` (Ray starts agents and workers after ``ray.init`` returns), removed
    at :meth:`stop` (after ``ray.shutdown``)."""

    def __init__(self, out: Path, period_s: float = 1.0):
        self.out, self.period_s = out, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        record_local_cluster(self.out)
        self._thread = threading.Thread(target=self._refresh, name="ray-local-cluster-record", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                record_local_cluster(self.out)
            except OSError:  # a full disk or a removed folder: the record is a help, not the work
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        (self.out / RECORD_NAME).unlink(missing_ok=True)


def _signal_and_wait(procs: list[dict[str, Any]], sig: int, wait_s: float, poll_s: float) -> list[dict[str, Any]]:
    """Send ``sig`` to each recorded process of ``procs``, then wait up to ``wait_s`` for them to go: those still
    running."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(p["pid"]), sig)
    deadline = time.monotonic() + wait_s
    while any(_same(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return [p for p in procs if _same(p)]


def stop_leftovers(out: Path, wait_s: float = 5.0) -> str | None:
    """Stop the recorded processes of a local Ray cluster whose driver is gone (killed); returns the line that
    says so, or None when there was nothing to stop. A record of a live driver is left alone."""
    path = out / RECORD_NAME
    try:
        record = json.loads(path.read_text())
        driver, procs = record["driver"], list(record["processes"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # torn by a kill: nothing in it can be proven
        path.unlink(missing_ok=True)
        return None
    if _same(driver):  # that pipeline still runs (its lock says so too): not ours to stop
        return None
    alive = [p for p in procs if _same(p)]
    killed = _signal_and_wait(alive, signal.SIGTERM, wait_s, poll_s=0.1)
    # a killed process takes a moment to go (a large one tears down its memory first; longer on a busy machine):
    # "stopped" is said once they are gone
    _signal_and_wait(killed, signal.SIGKILL, wait_s, poll_s=0.05)
    path.unlink(missing_ok=True)
    if not alive:
        return None
    names = ", ".join(f"{p['name']} ({p['pid']})" for p in alive)
    return (f"stopped {len(alive)} process(es) left by the local Ray cluster of a pipeline that was killed "
            f"(driver pid {driver.get('pid')}, recorded in {path}): {names}")
