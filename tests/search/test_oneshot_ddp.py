"""The weight-sharing search under torch.distributed (two gloo processes on CPU): the replicas of the supernet
and the controller stay identical, and only rank 0 writes the journal and the outputs (the others follow the
strategy's steps without a journal)."""

from __future__ import annotations

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
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from helpers.search import oneshot_cfg

    from nasnet_det.data.cifar import synthetic_cifar
    from nasnet_det.engine.distributed import cleanup_distributed
    from search.reward import ChildData
    from search.runner import SearchRunner

    x, y = synthetic_cifar(64, size=32)
    search = SearchRunner(oneshot_cfg("ONESHOT.EPOCHS", 1, "ONESHOT.BATCH_SIZE", 8), Path(out_dir) / "run",
                          progress=False, data=ChildData.from_arrays(x, y, 16))
    summary = search.run()
    strategy = search.states["oneshot"].strategy
    torch.save({"supernet": strategy.supernet.state_dict(), "controller": strategy.controller.state_dict(),
                "summary": summary}, Path(out_dir) / f"rank_{rank}.pt")
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
    assert (tmp_path / "run/best_genotype.json").is_file() and (tmp_path / "run/oneshot_state.pth").is_file()
    # The supernet trained: its weights are not the initial ones.
    torch.manual_seed(0)
    from search.supernet import SuperNet

    init = SuperNet(2, 1, 4).state_dict()
    assert any(not torch.equal(v, r0["supernet"][k]) for k, v in init.items())
