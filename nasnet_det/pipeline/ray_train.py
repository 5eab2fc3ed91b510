"""The function each Ray Train worker runs (``PIPELINE.BACKEND ray``): the classification or detection trainer
of the stage, in the process group Ray Train set up (gloo on CPU workers, nccl on GPU workers).

The trainers see an initialised ``torch.distributed`` and take rank and world size from it, as under torchrun;
detectron2 also needs its per-machine group, which :func:`detectron2.utils.comm.create_local_process_group`
creates. Every (re)start of a worker writes ``ray_workers/rank<R>.json`` (pid, node, start time), so a restart
after a lost worker is visible, and the trainer resumes from the checkpoint in the stage folder. Output goes to
the stage's ``stage.log`` (rank 0) and ``ray_workers/rank<R>.log`` (the others).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nasnet_det.pipeline.launch import LOG_NAME

WORKERS_DIR = "ray_workers"
BAD_INPUT_EXIT = 2  # the tools' exit code for bad input (nasnet_det.utils.errors.exit_2_on_bad_input)


class ToolFailed(RuntimeError):
    """The trainer returned a non-zero exit code (its ``error:`` line is in the log): Ray Train retries."""


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """stdout and stderr (file descriptors 1 and 2, so C++ and child output too) appended to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _run_classification(argv: list[str]) -> int:
    from nasnet_det.classification.cli import main

    return main(argv)


def _run_detection(argv: list[str]) -> int:
    import ray.train
    import torch
    from detectron2.utils import comm

    from nasnet_det.detection.train import argument_parser, run
    from nasnet_det.utils.errors import exit_2_on_bad_input

    local = ray.train.get_context().get_local_world_size()
    # detectron2's per-machine groups (ranks r // local) assume the same number of workers on every machine; Ray
    # may place them unevenly (3 + 1), and mismatched group creation would hang, so refuse it in one line.
    counts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(counts, local)
    if len(set(counts)) != 1:
        raise RuntimeError(f"Ray placed this stage's workers unevenly over the machines ({counts} workers per "
                           "worker's machine); detectron2 needs the same number on each: give every machine the "
                           "same resources, with a world size that is a multiple of the workers per machine")
    comm.create_local_process_group(local)
    device = ray.train.torch.get_device()  # cpu for a worker given no GPU (its GPUs are hidden from it)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    args = argument_parser().parse_args(argv)
    rc = exit_2_on_bad_input(run)(args)  # bad input: its error line in the log, exit code 2; else the results
    return rc if isinstance(rc, int) else 0


KINDS = {"classification": _run_classification, "detection": _run_detection}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    workdir = Path(config["workdir"])
    (workdir / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "node_rank": ctx.get_node_rank(), "local_rank": ctx.get_local_rank(),
              "world_size": ctx.get_world_size(), "started": time.time()}
    starts = workdir / WORKERS_DIR / f"rank{rank}.jsonl"  # one line per (re)start of this rank
    with open(starts, "a") as f:
        f.write(json.dumps(record) + "\n")
    log = workdir / LOG_NAME if rank == 0 else workdir / WORKERS_DIR / f"rank{rank}.log"
    if os.path.isdir(config["cwd"]):  # relative paths in the stage's opts mean what they mean to the pipeline
        os.chdir(config["cwd"])
    with _output_to(log):
        rc = KINDS[config["kind"]](list(config["argv"]))
    (workdir / WORKERS_DIR / f"rank{rank}.exit").write_text(f"{rc}\n")
    if rc and rc != BAD_INPUT_EXIT:
        raise ToolFailed(f"the {config['kind']} trainer exited with code {rc}; its error line is in {log}")
    # bad input (exit code 2) ends the job without a retry, which could not help: the driver reads the code


def exit_code(workdir: Path) -> int:
    """Rank 0's exit code of the last Ray Train job in ``workdir`` (0 when it wrote none)."""
    path = workdir / WORKERS_DIR / "rank0.exit"
    return int(path.read_text().strip() or 0) if path.is_file() else 0
