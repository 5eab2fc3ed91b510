"""tests/helpers/jobs.py: a job forked from a job server behaves, to its caller, as ``subprocess.run`` of a fresh
``python -c CODE ARGS`` (the fault drills and full-disk tests rely on it)."""

from __future__ import annotations

import signal
import subprocess

import pytest
from helpers.jobs import REPO, JobServer


@pytest.fixture(scope="module")
def server():
    s = JobServer(["json"])
    yield s
    s.close()


def test_a_job_gets_its_argv_environment_and_folder_and_gives_its_output_and_exit_code(server, tmp_path):
    code = ("import os, sys; print(sys.argv[1:], os.environ['WHO'], os.getcwd()); "
            "print('to stderr', file=sys.stderr); sys.exit(int(sys.argv[1]))")
    proc = server.run(code, ["3", "x"], {"WHO": "job"}, tmp_path, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, f"['3', 'x'] job {tmp_path}\n", "to stderr\n")
    # a message as the exit status, an exception, the end of the code: as Python exits
    said = server.run("import sys; sys.exit('error: bad input')", [], {}, REPO, timeout=60)
    assert (said.returncode, said.stderr) == (1, "error: bad input\n")
    raised = server.run("raise ValueError('no')", [], {}, REPO, timeout=60)
    assert raised.returncode == 1 and raised.stderr.startswith("Traceback") and "ValueError: no" in raised.stderr
    assert server.run("x = 1", [], {}, REPO, timeout=60).returncode == 0
    # the interpreter's own end: atexit callbacks run, unflushed output is written
    ended = server.run("import atexit, sys; atexit.register(print, 'at exit'); sys.stdout.write('unflushed')", [],
                       {}, REPO, timeout=60)
    assert (ended.returncode, ended.stdout) == (0, "unflushedat exit\n")


def test_a_killed_job_is_a_negative_code_and_one_past_its_time_is_killed(server):
    killed = server.run("import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
                        [], {}, REPO, timeout=60)
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, "before\n")
    with pytest.raises(subprocess.TimeoutExpired):
        server.run("import time; time.sleep(600)", [], {}, REPO, timeout=1)
    # the server goes on serving
    assert server.run("print(1 + 1)", [], {}, REPO, timeout=60).stdout == "2\n"
