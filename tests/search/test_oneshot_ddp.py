"""The weight-sharing search under torch.distributed (two gloo processes on CPU): the replicas of the supernet
and the controller stay identical, and only rank 0 writes the journal and the outputs (the others follow the
strategy's steps without a journal), and ``nasnet-det search`` prints rank 0's summary alone."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers import this module by name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """The search on each process, as ``nasnet-det search`` under torchrun runs it: first with
    SEARCH.MAX_EVALS_THIS_RUN (refused), then to the end, then once more from the command line (a finished
    search: what each process prints)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from helpers.search import tiny_opts

    from nasnet_det.engine.distributed import cleanup_distributed
    from search.cli import main
    from search.config import load_cfg
    from search.runner import SearchRunner

    opts = tiny_opts("oneshot", "ONESHOT.EPOCHS", 1, "ONESHOT.BATCH_SIZE", 8, "DATA.SOURCE", "synthetic:64")
    args = ["--output-dir", str(Path(out_dir) / "run"), "--no-progress", *opts]
    printed, codes = Path(out_dir) / f"printed_{rank}.txt", []
    # (one file for everything: the command line's logging keeps the stream it was first given)
    with open(printed, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        codes.append(main([*args, "SEARCH.MAX_EVALS_THIS_RUN", "2"]))
        search = SearchRunner(load_cfg(None, opts), Path(out_dir) / "run", progress=False)
        summary = search.run()
        strategy = search.states["oneshot"].strategy
        torch.save({"supernet": strategy.supernet.state_dict(), "controller": strategy.controller.state_dict(),
                    "summary": summary}, Path(out_dir) / f"rank_{rank}.pt")
        codes.append(main(args))
    (Path(out_dir) / f"codes_{rank}.json").write_text(json.dumps(codes))
    cleanup_distributed()


@pytest.mark.slow  # ~30-60 s: started first (tests/conftest.py)
def test_two_processes_keep_identical_replicas_and_rank_0_writes_the_outputs(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank_0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank_1.pt", weights_only=False)
    for part in ("supernet", "controller"):
        for k, v in r0[part].items():
            assert torch.equal(v, r1[part][k]), f"{part}.{k} differs between the processes"
    assert r0["summary"]["best"] is not None and r1["summary"]["strategies"] == {}
    assert r1["summary"]["usable"] and r1["summary"]["problems"] == []  # what the command line reads
    # SEARCH.MAX_EVALS_THIS_RUN: rank 1 has no journal to count by (it would train on after rank 0 stopped: a
    # hang), so it is one line on each process; the summary is rank 0's to print
    for rank in (0, 1):
        assert json.loads((tmp_path / f"codes_{rank}.json").read_text()) == [2, 0], rank
        printed = (tmp_path / f"printed_{rank}.txt").read_text()
        assert "SEARCH.MAX_EVALS_THIS_RUN=2: expected 0 with 2 processes" in printed and "Traceback" not in printed
        assert ('"best"' in printed) == (rank == 0), printed
    assert (tmp_path / "run/best_genotype.json").is_file() and (tmp_path / "run/oneshot_state.pth").is_file()
    # The supernet trained: its weights are not the initial ones.
    torch.manual_seed(0)
    from search.supernet import SuperNet

    init = SuperNet(2, 1, 4).state_dict()
    assert any(not torch.equal(v, r0["supernet"][k]) for k, v in init.items())
