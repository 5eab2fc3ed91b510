"""Every test has a time limit (pyproject.toml, pytest-timeout): a hang fails in minutes, with its stack, instead of
eating CI's 90 minutes. The oneDNN hang that once froze `make test` spun inside a native kernel, where a signal
handler never runs: the limit must hold there too."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_suite_has_a_time_limit_that_a_native_hang_cannot_dodge(pytestconfig):
    assert float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.getini("timeout_method") == "thread"  # a SIGALRM handler needs the interpreter back


def test_a_test_stuck_in_native_code_fails_with_its_stack(tmp_path: Path):
    # A C call with SIGALRM blocked holds the main thread as a spinning kernel does: no signal handler runs.
    # The limit is the project's configuration (pyproject.toml) with a 3-second timeout.
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent("""
        import ctypes
        import signal

        def wait_in_native_code():
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            ctypes.CDLL(None).sleep(60)

        def test_stuck():
            wait_in_native_code()
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                          str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=3",
                          str(tmp_path / "test_stuck.py")], capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "Timeout" in out, out
    assert "wait_in_native_code" in out, out  # the stack of the stuck test names where it hung
