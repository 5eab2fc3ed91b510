"""Running a stage's tool as a child process: command lines (plain, torchrun, detectron2 launch), and a
runner that tees the child's output to the console and to the stage's log and turns a failure into one
message naming the stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fvcore.common.config import CfgNode as CN

from nasnet_det.engine.process import OMP_WAIT_POLICY, die_with_parent, omp_wait_policy
from nasnet_det.pipeline.paths import repo_root
from nasnet_det.utils.io import DiskFullError, as_disk_full_error, disk_full_errors

LOG_NAME = "stage.log"


class StageError(ValueError):
    """A stage cannot run or failed: the message names the stage, the file or key, and what was expected."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage '{stage}': {message}")
        self.stage = stage


def tool_path(stage: str, name: str) -> Path:
    path = repo_root() / "tools" / name
    if not path.is_file():
        raise StageError(stage, f"the tool {path} does not exist; run the pipeline from a checkout of nasnet-det "
                                "(tools/ sits next to the nasnet_det package)")
    return path


def python(cfg: CN) -> str:
    return cfg.PIPELINE.PYTHON or sys.executable


def torchrun_prefix(cfg: CN, nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str = "") -> list[str]:
    """``python -m torch.distributed.run ...`` for ``nproc`` processes per machine (plain python for one)."""
    if nproc <= 1 and nnodes <= 1:
        return [python(cfg)]
    cmd = [python(cfg), "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("a multi-machine torchrun needs RDZV_ENDPOINT HOST:PORT")
        cmd += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", rdzv_endpoint]
    else:
        cmd += ["--standalone"]
    return cmd


def last_error_line(output: str) -> str:
    """The most telling line of a failed tool's output: the ``error:`` line our tools print (also under
    torchrun, whose ChildFailedError report comes after it), else any line with ``error:``, else the exception
    line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pred in (lambda ln: ln.startswith("error:") or ": error: " in ln, lambda ln: "error:" in ln.lower(),
                 lambda ln: "Error" in ln.split(":")[0]):
        hits = [ln for ln in lines if pred(ln)]
        if hits:
            return hits[-1][-600:]
    return lines[-1][-600:] if lines else ""


TAIL_BYTES = 1 << 16  # of a tool's output, kept to find its error line


class _StageLog:
    """``workdir/stage.log``, appended to. When the disk is full it stops writing (the tool's own error line
    says why it failed; the console still gets everything) and remembers it, instead of killing the tool."""

    def __init__(self, path: Path):
        self.path = path
        self.full: DiskFullError | None = None
        self._f = open(path, "ab", buffering=0)  # unbuffered: nothing left to flush when the disk is full

    def write(self, data: bytes) -> None:
        if self.full is not None:
            return
        view = memoryview(data)
        try:
            while view:  # a raw write may take part of the data
                view = view[self._f.write(view):]
        except OSError as e:
            self.full = as_disk_full_error(e, self.path)
            if self.full is None:
                raise

    def close(self) -> None:
        self._f.close()


def run_tool(stage: str, argv: list[str], workdir: Path, quiet: bool = False) -> None:
    """Run ``argv``; its output goes to ``workdir/stage.log`` (appended: a resumed stage keeps its history)
    and, unless ``quiet``, to the console. A non-zero exit raises :class:`StageError` with the tool's error
    line. A full disk that stopped the log raises :class:`DiskFullError` once the tool is done."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / LOG_NAME
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root()), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[OMP_WAIT_POLICY] = omp_wait_policy(env)  # idle OpenMP threads sleep: see omp_wait_policy
    with disk_full_errors(log_path):
        log = _StageLog(log_path)
    tail = bytearray()  # the error line comes from here: stage.log may have missed it (a full disk)
    try:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=die_with_parent)  # no orphan keeps writing
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(1 << 16):
                log.write(chunk)
                tail += chunk
                del tail[:-TAIL_BYTES]
                if not quiet:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            rc = proc.wait()
        except BaseException:  # an interrupt (Ctrl-C, SIGTERM): the tool stops too, then the pipeline
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    finally:
        log.close()
    if rc != 0:
        detail = last_error_line(tail.decode(errors="replace"))
        tool = next((Path(a).name for a in argv if a.endswith(".py")), argv[0])
        incomplete = ", incomplete: no space left on device" if log.full is not None else ""
        raise StageError(stage, f"{tool} exited with code {rc}{': ' + detail if detail else ''} "
                                f"(full log: {log_path}{incomplete}); fix it and rerun the same command to "
                                "continue from here")
    if log.full is not None:
        raise log.full
