"""Detection training on several processes: a resumed run restores every rank's own RNG state (rank 0 alone
saves), and a finished run's rerun completes ``model_final.pth`` and decides what to evaluate on rank 0 only.
Two gloo processes on the CPU drive the trainer's own hooks and checkpointer around a step that only draws
random numbers, so the test costs process start-up, not a detector."""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from detectron2.config import CfgNode
from detectron2.engine import TrainerBase, hooks
from detectron2.utils.env import seed_all_rng

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers import this module by name

MAX_ITER, PERIOD = 4, 2  # checkpoints after iterations 1 and 3 (and model_final)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DrawingTrainer(TrainerBase):
    """The detection Trainer's checkpoint hooks, in its order, around a step that records one draw of each
    generator a detection step uses (torch: ROI sampling, drop-path; numpy and python: augmentation)."""

    def __init__(self, out: Path):
        from detectron2.utils import comm

        from nasnet_det.detection.checkpoint import NASNetDetectionCheckpointer
        from nasnet_det.detection.hooks import ExactResume, GatherRngStates

        super().__init__()
        self.cfg = CfgNode({"OUTPUT_DIR": str(out), "SEED": 0, "SOLVER": {"IMS_PER_BATCH": 2},
                            "DATASETS": {"TEST": ("a", "b")}})
        self.model = torch.nn.Linear(1, 1)
        self.data_loader: list = []
        self.max_iter = MAX_ITER
        self.draws: dict[int, tuple[float, float, float]] = {}
        self.checkpointer = NASNetDetectionCheckpointer(self.model, str(out), trainer=self)
        exact = ExactResume()
        self.register_hooks([GatherRngStates(PERIOD, exact),
                             hooks.PeriodicCheckpointer(self.checkpointer, PERIOD) if comm.is_main_process() else None,
                             exact])

    def run_step(self) -> None:
        self.draws[self.iter] = (torch.rand(()).item(), float(np.random.rand()), random.random())


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from detectron2.utils import comm

    from nasnet_det.detection.checkpoint import FINAL_CHECKPOINT
    from nasnet_det.detection.train import finalize_completed_run

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = Path(out)
        seed_all_rng(rank)  # as detectron2's default_setup: SEED + rank
        full = DrawingTrainer(out / "run")
        full.train(0, MAX_ITER)
        # Resume from the checkpoint after iteration 1, with whatever the generators hold by then.
        seed_all_rng(1000 + rank)
        comm.synchronize()
        resumed = DrawingTrainer(out / "run")
        resumed.checkpointer.load(str(out / "run" / "model_0000001.pth"))
        resumed.train(resumed.iter + 1, MAX_ITER)

        # A finished run killed before model_final.pth: rank 0 writes it; rank 1, there at once, must wait for it
        # (reading the file's time itself, it failed: FileNotFoundError) and take rank 0's decision.
        if rank == 0:
            (out / "finish").mkdir()
            shutil.copy(out / "run" / "model_0000003.pth", out / "finish")
        comm.synchronize()
        finished = DrawingTrainer(out / "finish")
        finished.checkpointer.resume_or_load("", resume=True)
        finished.start_iter = finished.iter + 1
        pending = finalize_completed_run(finished.cfg, finished)
        final = out / "finish" / FINAL_CHECKPOINT
        torch.save({"full": full.draws, "resumed": resumed.draws, "pending": pending, "final": final.is_file()},
                   out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_resume_each_ranks_rng_and_finish_a_run_together(tmp_path, caplog):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["full"][2] != ranks[1]["full"][2]  # the ranks draw different numbers
    for rank, r in enumerate(ranks):
        # after the resume at iteration 2, each rank draws what it drew in the uninterrupted run
        assert r["resumed"] == {i: r["full"][i] for i in (2, 3)}, f"rank {rank}"
        assert r["final"] and r["pending"] == ["a", "b"]  # model_final.pth written, one decision for all

    # The same checkpoint resumed by one process: two saved states do not fit, so it is seeded anew, and says so.
    from nasnet_det.detection.hooks import reseeded_rng

    seed_all_rng(7)
    one = DrawingTrainer(tmp_path / "run")
    one.checkpointer.load(str(tmp_path / "run" / "model_0000001.pth"))
    with caplog.at_level(logging.WARNING, logger="nasnet_det"):
        one.train(2, 3)
    seed_all_rng(reseeded_rng(0, 2, 0))
    assert one.draws[2] == (torch.rand(()).item(), float(np.random.rand()), random.random())
    assert ranks[0]["full"][2] != one.draws[2]
    assert any("holds the RNG states of 2 process(es)" in r.getMessage() and "seeded anew" in r.getMessage()
               for r in caplog.records)


def test_a_checkpoint_of_one_process_restores_its_state_exactly(tmp_path):
    seed_all_rng(3)
    full = DrawingTrainer(tmp_path)
    full.train(0, MAX_ITER)
    seed_all_rng(4)
    resumed = DrawingTrainer(tmp_path)
    resumed.checkpointer.load(str(tmp_path / "model_0000001.pth"))
    state = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["trainer"]["hooks"]["ExactResume"]
    assert len(state["rng_per_rank"]) == 1
    resumed.train(resumed.iter + 1, MAX_ITER)
    assert resumed.draws == {i: full.draws[i] for i in (2, 3)}


def test_older_single_state_checkpoints_still_resume(tmp_path):
    """Checkpoints written before per-rank states hold only ``rng``: one process restores it."""
    from nasnet_det.detection.hooks import ExactResume
    from nasnet_det.engine.rng import capture_rng_state

    seed_all_rng(5)
    saved = capture_rng_state()
    expected = torch.rand(3)
    hook = ExactResume()
    hook.trainer = DrawingTrainer(tmp_path)
    hook.restore_rng({"rng": saved, "history": {}}, start_iter=2)
    assert torch.equal(torch.rand(3), expected)


def test_the_final_evaluation_is_pending_for_datasets_without_newer_metrics(tmp_path):
    from nasnet_det.detection.train import unevaluated_datasets

    cfg = CfgNode({"OUTPUT_DIR": str(tmp_path), "DATASETS": {"TEST": ("before", "after", "never")}})
    for name in ("before", "after"):
        (tmp_path / "inference" / name).mkdir(parents=True)
    (tmp_path / "inference" / "before" / "coco_metrics.json").write_text("{}")  # a periodic evaluation
    (tmp_path / "model_final.pth").write_bytes(b"")
    (tmp_path / "inference" / "after" / "coco_metrics.json").write_text("{}")
    now = time.time()
    os.utime(tmp_path / "inference" / "before" / "coco_metrics.json", (now - 60, now - 60))
    os.utime(tmp_path / "model_final.pth", (now - 30, now - 30))
    assert unevaluated_datasets(cfg) == ["before", "never"]
