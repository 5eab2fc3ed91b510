"""A tool's entry point run as its own process, many times over, without paying Python's start-up each time.

The fault drills (kill -9 at chosen points, then the same command again) and the full-disk tests run a tool's
``module:function`` some twenty times; each fresh Python spent ~4 of its ~6 s importing torch, torchvision,
detectron2 and the project. A :class:`JobServer` imports the entry's module once, in a process that has run
nothing (one torch thread: no OpenMP pool is started before a fork), and forks a child per job: the child sets
the job's environment, working directory and argv, writes its stdout and stderr to files, runs the job's code as
``python -c CODE ARGS`` would, and exits as the interpreter does (atexit callbacks, logging's shutdown) with its
code -- or dies by a signal, which the caller sees as a negative return code, as from ``subprocess.run``. What a
fresh process would print while importing the tool (e.g. a library's warning) is printed once, by the server. A
fault that a driver injects by replacing a function (``torch.save``, ``os.replace``, a class's method) still
reaches code that looks it up when it runs; a drill whose fault no longer fires fails on its own (it expects the
kill).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from helpers.lines import LineReader

REPO = Path(__file__).resolve().parents[2]

# Runs in the server: import, then fork a child per job line on stdin; answer {"pid"} then {"returncode"}.
SERVER = r"""
import gc, importlib, json, os, sys, traceback
answer = os.dup(1)  # the answers' pipe; the server's own stdout goes nowhere (an import that prints cannot garble it)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
import torch
torch.set_num_threads(1)
for name in filter(None, sys.argv[1].split(",")):
    importlib.import_module(name)
gc.collect()
gc.freeze()


def run(job):
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    try:
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job["cwd"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv = ["-c", *job["args"]]
        exec(compile(job["code"], "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


os.write(answer, b'{"ready": true}\n')
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.close(answer)
        # the job's end is the interpreter's, as in a fresh process: atexit callbacks, logging.shutdown, flushes
        sys.exit(run(job))
    os.write(answer, (json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    os.write(answer, (json.dumps({"returncode": rc}) + "\n").encode())
"""


def _read(*paths: Path) -> list[str]:
    """The text of a job's output files (undecodable bytes replaced, as ``errors="replace"`` does)."""
    return [p.read_text(errors="replace") for p in paths]


class JobServer:
    """Forks of one process that imported ``preload`` (module names): :meth:`run` is ``subprocess.run([python,
    "-c", code, *args], env=..., cwd=..., capture_output=True, text=True, timeout=...)`` without the start-up."""

    def __init__(self, preload: Sequence[str], env: dict[str, str] | None = None):
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen([sys.executable, "-c", SERVER, ",".join(preload)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, cwd=REPO, env=env)
        self._reader = LineReader(self._proc.stdout.fileno())
        try:
            self._answer(600)  # {"ready": true} once it has imported
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise

    def _answer(self, timeout: float | None) -> dict:
        line = self._reader.readline(None if timeout is None else time.monotonic() + timeout)
        if line is None and self._reader.eof:
            raise RuntimeError(f"the job server ended (exit {self._proc.wait()})")
        if line is None:
            raise TimeoutError
        return json.loads(line)

    def run(self, code: str, args: Sequence[str], env: dict[str, str], cwd: Path = REPO,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="job-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            job = {"code": code, "args": list(args), "env": env, "cwd": str(cwd), "stdout": str(out),
                   "stderr": str(err)}
            self._proc.stdin.write((json.dumps(job) + "\n").encode())
            self._proc.stdin.flush()
            pid = self._answer(60)["pid"]
            cmd = ["python", "-c", "...", *args]
            try:
                rc = self._answer(timeout)["returncode"]
            except BaseException as e:  # past its time, or the caller interrupted: the job ends, as subprocess.run's
                os.kill(pid, signal.SIGKILL)
                self._answer(60)
                if isinstance(e, TimeoutError):
                    raise subprocess.TimeoutExpired(cmd, timeout, *_read(out, err)) from None
                raise
            return subprocess.CompletedProcess(cmd, rc, *_read(out, err))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # the server's loop ends
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()


ENTRY_CODE = ("import json, sys, importlib; m, f = sys.argv[1].split(':'); "
              "sys.exit(getattr(importlib.import_module(m), f)(json.loads(sys.argv[2])))")


class Jobs:
    """One :class:`JobServer` per entry module, started at its first job (a test module's ``JOBS``, closed by
    tests/robustness/conftest.py after the module's tests)."""

    def __init__(self, env: dict[str, str] | None = None):
        self._env = env or {}
        self._servers: dict[str, JobServer] = {}

    def run(self, entry: str, argv: Sequence[str], code: str = ENTRY_CODE, env: dict[str, str] | None = None,
            timeout: float | None = 300) -> subprocess.CompletedProcess:
        """``entry`` (``module:function``, called with ``argv``; its return value is the exit code) under
        ``code`` (a driver that ends by calling it, as ENTRY_CODE does), with ``env`` added to this process's
        environment and the repository as working directory."""
        module = entry.split(":")[0]
        if module not in self._servers:
            self._servers[module] = JobServer([module], self._env)
        job_env = {**os.environ, "PYTHONPATH": str(REPO), **self._env, **(env or {})}
        return self._servers[module].run(code, [entry, json.dumps(list(argv))], job_env, REPO, timeout)

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
