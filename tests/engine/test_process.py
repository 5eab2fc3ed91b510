"""Training workers die with their launcher (kill -9 of the pipeline / torchrun must not leave them writing); the
processes a pipeline starts let idle OpenMP threads sleep."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nasnet_det.engine.distributed as distributed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")

LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    # like torchrun: the worker in its own session, so only the parent-death signal can reach it
    worker = subprocess.Popen([sys.executable, "-c", "from nasnet_det.engine.process import die_with_parent; "
                               "import time, sys; die_with_parent(); print('ready', flush=True); time.sleep(60)"],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "ready"
    print(worker.pid, flush=True)
    time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie counts as dead
        return f.read().split(")")[-1].split()[0] != "Z"


def test_worker_dies_when_its_launcher_is_killed_9():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker_pid = int(launcher.stdout.readline())
        assert _alive(worker_pid)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 10
        while _alive(worker_pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(worker_pid), "the worker outlived its kill -9'd launcher"
    finally:
        launcher.kill()


def test_torchrun_worker_asks_to_die_with_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "die_with_parent", lambda *parent: calls.append(parent) or True)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}.items():
        monkeypatch.setenv(k, v)
    info = distributed.init_distributed("cpu")
    assert calls == [(os.getppid(),)] and info.world_size == 2 and info.rank == 1  # the launcher's pid


def test_stage_processes_let_idle_openmp_threads_sleep_unless_the_user_chose(tmp_path: Path, monkeypatch):
    """The pipeline's stage tools and its Ray workers start with OMP_WAIT_POLICY PASSIVE (spinning OpenMP threads
    of processes sharing the cores slowed a detector iteration from ~1.5 s to ~15 s); a policy the user set
    stays."""
    from nasnet_det.engine.ray_env import worker_env_vars
    from nasnet_det.pipeline.launch import run_tool

    show = [sys.executable, "-c", "import os; print('policy', os.environ.get('OMP_WAIT_POLICY'))"]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    run_tool("detect", show, tmp_path / "unset", quiet=True)
    assert "policy PASSIVE\n" in (tmp_path / "unset" / "stage.log").read_text()
    assert worker_env_vars({})["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    run_tool("detect", show, tmp_path / "set", quiet=True)
    assert "policy ACTIVE\n" in (tmp_path / "set" / "stage.log").read_text()
    assert worker_env_vars({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_worker_whose_launcher_died_before_it_asked_to_die_with_it_ends():
    """torchrun killed while its workers were still importing torch: the parent-death request made after that
    would never fire (the worker has another parent by then) and the worker waited for the dead launcher forever;
    the pid read when the package was imported shows the launcher is gone. Here the worker is rank 1 of a torchrun
job whose rank 0 never answers, as after a kill of the launcher."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # held, never listened on: rank 0's store never answers
    worker_code = ("import nasnet_det, time; print('imported', flush=True); time.sleep(1.5); "  # 'setup' time
                   "from nasnet_det.engine.distributed import init_distributed; init_distributed('cpu')")
    launcher_code = textwrap.dedent(f"""
        import subprocess, sys
        w = subprocess.Popen([sys.executable, "-c", {worker_code!r}], start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert w.stdout.readline().strip() == "imported"  # it has the package, has not asked yet: die now
        print(w.pid, flush=True)
    """)
    env.update(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port.getsockname()[1]), TORCHELASTIC_RUN_ID="drill")
    out = subprocess.run([sys.executable, "-c", launcher_code], capture_output=True, text=True, env=env,
                         timeout=60)
    worker_pid = int(out.stdout.split()[0])
    deadline = time.time() + 15
    while _alive(worker_pid) and time.time() < deadline:
        time.sleep(0.05)
    alive = _alive(worker_pid)
    port.close()
    if alive:
        os.kill(worker_pid, signal.SIGKILL)
    assert not alive, "the worker outlived a launcher that died before it asked to die with it"
