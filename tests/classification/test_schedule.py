"""The recipe follows the global batch: effective LR, steps and EMA decay from SOLVER.REFERENCE_BATCH_SIZE
(nasnet_det/engine/scaling.py), recorded in schedule.json; each process draws its own augmentation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.train import tiny_cfg

from nasnet_det.classification import Trainer
from nasnet_det.classification.config import load_config
from nasnet_det.classification.sampler import ShardedEpochSampler, train_loader_seed
from nasnet_det.engine.distributed import DistInfo
from nasnet_det.engine.scaling import classification_schedule
from nasnet_det.pipeline.stages.base import trained_with
from nasnet_det.utils.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]


def _train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_lr_steps_and_ema_follow_the_global_batch_and_are_recorded(tmp_path):
    # Stated for 16 images per step; this run takes 8 x 4 accumulation = 32: twice the LR, half the steps,
    # the EMA decay squared (the same averaging horizon in images).
    cfg = tiny_cfg(tmp_path, "SOLVER.REFERENCE_BATCH_SIZE", 16, "SOLVER.BASE_LR", 0.1, "SOLVER.MAX_STEPS", 6,
                   "SOLVER.BATCH_SIZE", 8, "SOLVER.ACCUM_STEPS", 4, "SOLVER.EMA_DECAY", 0.9,
                   "SOLVER.LR_SCHEDULE", "constant", n_images=80)  # 64 training images: 2 steps per epoch
    trainer = Trainer(cfg)
    assert len(trainer.optimizer.param_groups) == 2
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.2, 0.2])
    assert trainer.scheduler.base_lrs == pytest.approx([0.2, 0.2])
    assert (trainer.total_steps, trainer.steps_per_epoch) == (3, 2)
    assert trainer.ema.decay == pytest.approx(0.81)
    trainer.train()
    assert [r["lr"] for r in _train_records(tmp_path)] == pytest.approx([0.2] * 3)
    schedule = json.loads((tmp_path / "schedule.json").read_text())
    assert {k: schedule[k] for k in ("processes", "batch_per_process", "accum_steps", "global_batch",
                                     "reference_batch", "lr_scaling", "steps", "steps_per_epoch", "train_images",
                                     "start_step", "amp")} == {
        "processes": 1, "batch_per_process": 8, "accum_steps": 4, "global_batch": 32, "reference_batch": 16,
        "lr_scaling": "linear", "steps": 3, "steps_per_epoch": 2, "train_images": 64, "start_step": 0,
        "amp": "float32"}
    assert schedule["device"] == {"device": "cpu", "torch": torch.__version__,
                                  "torch_cuda": torch.version.cuda or "cpu"}
    assert schedule["lr"] == pytest.approx(0.2) and schedule["base_lr"] == pytest.approx(0.1)
    assert schedule["ema_decay"] == pytest.approx(0.81) and schedule["epochs"] == pytest.approx(1.5)
    # what the pipeline's manifest records of the run, read from this file
    assert trained_with("pretrain", tmp_path) == {"device": "cpu", "torch_cuda": torch.version.cuda or "cpu",
                                                   "global_batch": 32, "effective_lr": pytest.approx(0.2),
                                                   "amp": "float32"}
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["global_batch"] == 32 and final["effective_lr"] == pytest.approx(0.2)


def test_epochs_follow_any_batch_and_the_sampler_counts_as_the_schedule(tmp_path):
    cfg = tiny_cfg(tmp_path, "SOLVER.REFERENCE_BATCH_SIZE", 16, "SOLVER.BASE_LR", 0.1, "SOLVER.MAX_STEPS", 0,
                   "SOLVER.EPOCHS", 3, "SOLVER.BATCH_SIZE", 4, "SOLVER.WARMUP_EPOCHS", 0.5, n_images=80)
    trainer = Trainer(cfg)  # 4 images per step: a quarter of the LR, 3 epochs of 16 steps
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.025)
    assert trainer.total_steps == 3 * trainer.steps_per_epoch == 48 == trainer.schedule.steps
    assert trainer.schedule.warmup_steps == 8
    # What the trainer checks on every start, over process counts it cannot start here: the schedule (which
    # `nasnet-det plan` prints) counts the steps per epoch the sharded sampler gives every process.
    for images in (50_000, 1_281_167, 1001, 63):
        for processes in (1, 2, 3, 8, 64):
            for batch, accum in ((32, 1), (16, 2), (7, 3)):
                solver = tiny_cfg(tmp_path, "SOLVER.BATCH_SIZE", batch, "SOLVER.ACCUM_STEPS", accum).SOLVER
                schedule = classification_schedule(solver, processes, images)
                for rank in (0, processes - 1):
                    assert len(ShardedEpochSampler(images, rank, processes)) // batch // accum == \
                        schedule.steps_per_epoch, (images, processes, batch, accum, rank)


@pytest.mark.parametrize("batch, accum", [(8, 1), (4, 2), (2, 4)])
def test_reference_batch_0_keeps_every_value_as_written(tmp_path, batch, accum):
    trainer = Trainer(tiny_cfg(tmp_path, "SOLVER.BASE_LR", 0.05, "SOLVER.MAX_STEPS", 5, "SOLVER.EMA_DECAY", 0.9,
                               "SOLVER.BATCH_SIZE", batch, "SOLVER.ACCUM_STEPS", accum))
    assert trainer.cfg.SOLVER.REFERENCE_BATCH_SIZE == 0
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [0.05, 0.05]  # exactly, not approx
    assert trainer.total_steps == 5 and trainer.ema.decay == 0.9


@pytest.mark.parametrize("config", ["cifar10_smoke.yaml", "imagenet_smoke.yaml", "imagenet_sample.yaml"])
def test_smoke_configs_run_as_written_on_any_number_of_processes(config):
    solver = load_config(REPO / "configs/train" / config).SOLVER
    assert solver.REFERENCE_BATCH_SIZE == 0
    for processes in (1, 2, 8):
        schedule = classification_schedule(solver, processes, 10_000)
        assert (schedule.lr, schedule.steps, schedule.ema_decay) == (solver.BASE_LR, solver.MAX_STEPS,
                                                                     solver.EMA_DECAY)


def test_an_epochs_schedule_reports_its_passes_and_clamps_the_warm_up(tmp_path):
    # 1001 images at 32 per step: 31 steps per pass, 992 images; 600 passes are 594.6 epochs of images
    solver = tiny_cfg(tmp_path, "SOLVER.MAX_STEPS", 0, "SOLVER.EPOCHS", 600, "SOLVER.BATCH_SIZE", 32,
                      "SOLVER.WARMUP_EPOCHS", 700.0).SOLVER
    schedule = classification_schedule(solver, 1, 1001)
    assert schedule.steps == 600 * 31 and schedule.passes == 600
    assert "18,600 steps = 600 passes (594.6 epochs of 1,001 images; the last partial step of each pass is " \
           "dropped)" in schedule.describe()
    assert schedule.warmup_steps == schedule.steps  # WARMUP_EPOCHS past the end: the whole run warms up
    # a MAX_STEPS run, or passes that lose nothing, report epochs as before
    assert "600 passes" not in classification_schedule(solver, 1, 992).describe()


@pytest.mark.parametrize("config, processes, lr, steps", [
    # slim's own batch: 50 replicas x 32 = 1600 images per step, LR 2.0, 250k steps
    ("imagenet_nasnet_a_mobile.yaml", 50, 2.0, 250_000),
    ("imagenet_nasnet_a_mobile.yaml", 8, 0.32, 1_562_500),  # the config's comment
    ("imagenet_nasnet_a_large.yaml", 100, 1.5, 250_000),  # 100 replicas x 16
    ("imagenet_nasnet_a_large.yaml", 8, 0.12, 3_125_000),
    ("cifar10_nasnet_a_6x768.yaml", 1, 0.025, 600 * 1562),  # 50,000 images, batch 32: 1562 steps per epoch
    ("cifar10_nasnet_a_6x768.yaml", 8, 0.2, 600 * 195),  # the config's comment: 117,000 steps of 256
])
def test_paper_configs_derive_the_published_recipe(config, processes, lr, steps):
    cfg = load_config(REPO / "configs/train" / config)
    images = 50_000 if cfg.DATA.DATASET == "cifar10" else 1_281_167
    schedule = classification_schedule(cfg.SOLVER, processes, images)
    assert schedule.lr == pytest.approx(lr) and schedule.steps == steps


def test_resume_at_another_global_batch_is_refused_saying_how_to_keep_the_batch(tmp_path):
    # As a run resumed on twice the processes: its 2 steps done are steps of 8 images, this run's would be of 16,
    # so the rest of the schedule (2 steps of 16 planned from 4 of 8) would train another number of images.
    opts = ("SOLVER.REFERENCE_BATCH_SIZE", 8, "SOLVER.BASE_LR", 0.1, "SOLVER.MAX_STEPS", 4,
            "SOLVER.LR_SCHEDULE", "cosine", "TRAIN.CHECKPOINT_PERIOD", 2)
    assert Trainer(tiny_cfg(tmp_path, *opts)).train(interrupt_at_step=2) == {"interrupted_at_step": 2}
    resumed = Trainer(tiny_cfg(tmp_path, *opts, "SOLVER.ACCUM_STEPS", 2))
    with pytest.raises(BadInputError, match=r"was trained at a global batch of 8 images per step, this run's is 16 "
                                            r"\(SOLVER.BATCH_SIZE 8 x SOLVER.ACCUM_STEPS 2 x 1 process\(es\)\).*"
                                            r"resume with a global batch of 8: SOLVER.ACCUM_STEPS 1, or start over"):
        resumed.train()
    # half the per-process batch, twice the accumulation: the same global batch resumes
    same = Trainer(tiny_cfg(tmp_path, *opts, "SOLVER.BATCH_SIZE", 4, "SOLVER.ACCUM_STEPS", 2))
    assert same.train()["step"] == 4 and same.total_steps == 4


def test_resume_with_an_edited_base_lr_continues_at_the_new_lr(tmp_path, caplog):
    opts = ("SOLVER.BASE_LR", 0.1, "SOLVER.MAX_STEPS", 4, "SOLVER.LR_SCHEDULE", "constant",
            "TRAIN.CHECKPOINT_PERIOD", 2)
    assert Trainer(tiny_cfg(tmp_path, *opts)).train(interrupt_at_step=2) == {"interrupted_at_step": 2}
    resumed = Trainer(tiny_cfg(tmp_path, *opts, "SOLVER.BASE_LR", 0.2))
    with caplog.at_level(logging.WARNING):
        resumed.train()
    assert "was trained at LR 0.1 (global batch 8); this run's effective LR is 0.2 (global batch 8)" in caplog.text
    assert [r["lr"] for r in _train_records(tmp_path)] == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert json.loads((tmp_path / "schedule.json").read_text())["start_step"] == 2


def test_each_process_draws_its_own_augmentation_in_loader_workers(tmp_path):
    # Every training image is the same, so two batches differ only by their random crops, flips and cutouts.
    npz = tmp_path / "same.npz"
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.savez(npz, x_train=np.repeat(image[None], 48, axis=0), y_train=np.zeros(48, np.uint8))
    trainer = Trainer(tiny_cfg(tmp_path / "run", "DATA.SOURCE", f"npz:{npz}", "DATA.NUM_WORKERS", 1))
    first = {}
    for rank in (0, 1):  # the loader process `rank` of 2 builds (no process group needed to build it)
        trainer.dist = DistInfo(rank, 2, rank, torch.device("cpu"))
        batches, _ = trainer._train_batches()
        first[rank] = next(batches)[0]
        del batches  # stops its worker
    assert not torch.equal(first[0], first[1])
    # Rank 0 keeps the seed single-process runs always had, so they (and their resume) are unchanged.
    assert train_loader_seed(3, 2, 40, 0) == 3 * 1_000_003 + 2 * 7919 + 40
    # torch seeds its CPU generator with a seed's low 32 bits: there, 4096 processes' seeds all differ.
    assert len({train_loader_seed(3, 2, 40, rank) % 2 ** 32 for rank in range(4096)}) == 4096
