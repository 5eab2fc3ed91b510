"""DDP on CPU: two gloo processes average gradients like one process on the whole batch, and a full
training run keeps both replicas (and their weight EMAs) identical while only rank 0 writes files."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers import this module by name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


def _model():
    from nasnet_det.models import create_model

    torch.manual_seed(0)
    model = create_model("nasnet_a_cifar", num_cells=1, filters=4, image_size=16, drop_path_keep_prob=1.0)
    model.train()
    for m in model.modules():  # per-process batch statistics would differ from whole-batch ones
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from helpers.train import tiny_cfg
    from torch.nn.parallel import DistributedDataParallel

    from nasnet_det.classification import Trainer, accumulate_gradients
    from nasnet_det.engine.distributed import cleanup_distributed, init_distributed

    info = init_distributed("cpu")
    assert (info.rank, info.world_size) == (rank, world_size)
    ddp = DistributedDataParallel(_model())
    x, y = _batch()
    half = slice(4 * rank, 4 * rank + 4)
    accumulate_gradients(ddp, [(x[half], y[half])], 1, aux_weight=0.4)
    grads = {n: p.grad for n, p in ddp.module.named_parameters()}
    torch.save(grads, Path(out_dir) / f"grads_{rank}.pt")

    cfg = tiny_cfg(Path(out_dir) / "run", "SOLVER.MAX_STEPS", 3, "SOLVER.ACCUM_STEPS", 2,
                   "SOLVER.BATCH_SIZE", 4, "TRAIN.CHECKPOINT_PERIOD", 2, "TRAIN.EVAL_PERIOD", 2,
                   "SOLVER.EMA_DECAY", 0.9)
    trainer = Trainer(cfg, info)
    result = trainer.train()
    torch.save({"state_dict": trainer.model.state_dict(), "ema": trainer.ema.module.state_dict(), "result": result,
                "steps_per_epoch": trainer.steps_per_epoch}, Path(out_dir) / f"final_{rank}.pt")
    cleanup_distributed()


def test_ddp_two_cpu_processes(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    # Averaged gradients of the two halves equal one process's gradient on the whole batch.
    from nasnet_det.classification import accumulate_gradients

    model = _model()
    x, y = _batch()
    accumulate_gradients(model, [(x, y)], 1, aux_weight=0.4)
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads_{rank}.pt")
        for n, p in model.named_parameters():
            scale = float(p.grad.abs().max())  # float32 summation order differs; tolerance by tensor scale
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5 * scale + 1e-7,
                                       msg=f"rank {rank}: {n}")
    # The replicas stay identical; the eval covers the 16 held-out images once across both processes.
    a, b = (torch.load(tmp_path / f"final_{r}.pt", weights_only=False) for r in (0, 1))
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    # Each process's EMA averaged its own BN statistics; after the run all hold rank 0's (the checkpointed).
    assert any(n.endswith("running_mean") for n in a["ema"])
    for name, value in a["ema"].items():
        assert torch.equal(value, b["ema"][name]), f"EMA {name}"
    assert a["result"]["images"] == b["result"]["images"] == 16
    assert a["result"]["top1"] == b["result"]["top1"]
    assert a["steps_per_epoch"] == 56 // 2 // (4 * 2)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "ckpt_00000003.pth").is_file() and (run / "model_final.pth").is_file()
    mid = torch.load(run / "checkpoints" / "ckpt_00000002.pth", weights_only=False)
    assert (mid["epoch"], mid["samples_in_epoch"]) == (0, 2 * 2 * 4 * 2)  # steps x processes x batch x accum
    ckpt = torch.load(run / "checkpoints" / "ckpt_00000003.pth", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2
    assert (ckpt["epoch"], ckpt["samples_in_epoch"]) == (1, 0)  # 3 steps = one epoch of 56 images
    assert not torch.equal(ckpt["rng_states"][0]["torch"], ckpt["rng_states"][1]["torch"])
    for name, value in ckpt["state_dict"].items():
        assert torch.equal(value, a["state_dict"][name]), name
    for name, value in ckpt["ema_state_dict"].items():
        assert torch.equal(value, a["ema"][name]), f"EMA {name}"
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert sum('"type": "train"' in r for r in records) == 3  # rank 0 alone writes the log


def _aux_off_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from helpers.train import tiny_cfg

    from nasnet_det.classification import Trainer
    from nasnet_det.engine.distributed import cleanup_distributed, init_distributed

    info = init_distributed("cpu")
    # The recipe states LR 0.1 and 2 steps for 16 images per step; 2 processes x 4 images train 8 per step.
    cfg = tiny_cfg(Path(out_dir) / "run", "SOLVER.AUX_WEIGHT", 0.0, "SOLVER.BATCH_SIZE", 4,
                   "SOLVER.REFERENCE_BATCH_SIZE", 16, "SOLVER.BASE_LR", 0.1, "SOLVER.MAX_STEPS", 2,
                   "SOLVER.LR_SCHEDULE", "constant", "TRAIN.EVAL_PERIOD", 2)
    trainer = Trainer(cfg, info)
    aux_before = {n: p.detach().clone() for n, p in trainer.model.aux_head.named_parameters()}
    trainer.train()
    torch.save({"state_dict": trainer.model.state_dict(), "aux_before": aux_before,
                "lr": [g["lr"] for g in trainer.optimizer.param_groups], "total_steps": trainer.total_steps},
               Path(out_dir) / f"aux_off_{rank}.pt")
    cleanup_distributed()


def test_ddp_with_the_aux_head_weighted_0_trains_at_the_global_batchs_lr(tmp_path):
    # SOLVER.AUX_WEIGHT 0 with MODEL.NASNET.AUX_HEAD on: the aux head gets no gradient, which DDP must expect
    # (it used to fail at the second step). The recipe's LR and steps follow the world size.
    mp.spawn(_aux_off_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"aux_off_{r}.pt", weights_only=False) for r in (0, 1))
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for name, value in a["aux_before"].items():  # untrained: no gradient, so no update and no weight decay
        assert torch.equal(a["state_dict"][f"aux_head.{name}"], value), name
    assert a["lr"] == b["lr"] == [0.05, 0.05] and a["total_steps"] == b["total_steps"] == 4
    schedule = json.loads((tmp_path / "run" / "schedule.json").read_text())
    assert (schedule["processes"], schedule["global_batch"], schedule["steps"]) == (2, 8, 4)
    steps = [json.loads(r)["step"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"type": "train"' in r]
    assert steps == [1, 2, 3, 4]
