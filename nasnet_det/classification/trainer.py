"""Classification training loop (CIFAR-10 final training, ImageNet pretraining): what only this project needs.

The machinery comes from libraries: fvcore's ``Checkpointer`` and param schedulers, timm's ``RMSpropTF`` and
EMA (:mod:`.optim`, :mod:`.checkpoint`). What stays here: exact mid-epoch resume (the shuffle of an epoch depends
only on (seed, epoch); a checkpoint records the samples of the current epoch consumed and every process's RNG
state), the sharded sampler, gradient accumulation with ``no_sync``, the auxiliary-head loss, drop-path
progress, AMP (bf16 on CUDA or a CPU, fp16 on CUDA), the network's memory layout (MODEL.NASNET.CHANNELS_LAST),
and the export of ``model_final.pth`` in the format detection loads.
Classification does not import detectron2 (installed separately; ImageNet pretraining must not need it).

What "exact resume" covers: the data order (which images each step sees) is always restored exactly, and
so are weights, optimizer, LR schedule, EMA and the main-process RNG (drop-path masks, and augmentation when
``DATA.NUM_WORKERS`` is 0). With ``DATA.NUM_WORKERS`` > 0 the augmentation runs in DataLoader workers whose
RNG is re-seeded when the resumed epoch's loader starts, so a resumed run draws different random crops,
flips and cutouts than an uninterrupted one would: statistically the same training, not bit-identical.
Set ``DATA.NUM_WORKERS 0`` when bit-identical resume matters (e.g. for resume drills).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import random_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from nasnet_det.classification.checkpoint import (
    LAST_CHECKPOINT,
    TrainingCheckpointer,
    check_same_arch,
    check_same_global_batch,
    read_intact_checkpoint,
)
from nasnet_det.classification.data import ClassificationData, build_data
from nasnet_det.classification.metrics import MetricsWriter
from nasnet_det.classification.optim import (
    ModelEma,
    build_optimizer,
    build_scheduler,
    set_base_lr,
    upgrade_former_rmsprop_state,
)
from nasnet_det.classification.sampler import ShardedEpochSampler, train_loader_seed
from nasnet_det.classification.steps import accumulate_gradients, evaluate, to_device
from nasnet_det.engine.checkpoint import remove_files
from nasnet_det.engine.devices import describe_device
from nasnet_det.engine.distributed import DistInfo, all_gather_union, all_reduce_sum, barrier, init_distributed
from nasnet_det.engine.metrics import truncate_metrics
from nasnet_det.engine.rng import capture_rng_state, restore_rng_state
from nasnet_det.engine.scaling import SCHEDULE_FILE, classification_schedule
from nasnet_det.models import create_model
from nasnet_det.models.cell import leaves_input_unused
from nasnet_det.models.hub import is_named_weights
from nasnet_det.models.nasnet import NASNet
from nasnet_det.models.pretrained import load_named_weights, load_state_dict_report
from nasnet_det.utils.errors import BadInputError
from nasnet_det.utils.io import atomic_write

logger = logging.getLogger(__name__)

# Files a finished run leaves next to its checkpoints; a fresh run in the same folder removes them.
RUN_OUTPUTS = ("metrics.jsonl", "final_metrics.json", "model_final.pth", "training_curves.png")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    samples_in_epoch: int = 0  # samples of `epoch` consumed, summed over processes
    skipped_paths: set[str] = field(default_factory=set)  # corrupt training images met so far (all processes)

    @property
    def skipped_images(self) -> int:
        """Distinct corrupt training images (a file met again in a later epoch counts once)."""
        return len(self.skipped_paths)


# ----------------------------------------------------------------------------------------------- model
def build_model(cfg, num_classes: int, image_size: int) -> NASNet:
    return create_model(cfg, dataset="cifar" if cfg.DATA.DATASET == "cifar10" else "imagenet",
                        num_classes=num_classes, image_size=image_size)


# ----------------------------------------------------------------------------------------------- process
def default_num_threads() -> int:
    """Usable cores / training processes on this machine, so that processes sharing a machine do not
    oversubscribe it. An ``OMP_NUM_THREADS`` the user exported wins outside torchrun (which sets it to 1)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and "LOCAL_WORLD_SIZE" not in os.environ:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, cores // max(1, local))


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Builds everything from a config and runs :meth:`train`. ``interrupt_at_step`` stops a run after
    that step without its final checkpoint, as a preemption would (for resume drills and tests)."""

    def __init__(self, cfg, dist_info: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.TRAIN.DEVICE)
        torch.set_num_threads(cfg.TRAIN.NUM_THREADS if cfg.TRAIN.NUM_THREADS > 0 else default_num_threads())
        self.device = self.dist.device
        self.output_dir = Path(cfg.OUTPUT_DIR)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        cuda = self.device.type == "cuda"
        # bf16 autocast runs on CUDA and on a CPU; fp16 needs CUDA's gradient scaler (and is slow on a CPU)
        if cfg.TRAIN.AMP == "fp16" and not cuda:
            raise BadInputError(f"TRAIN.AMP fp16 needs a CUDA device (training on {self.device}); on a CPU use "
                                "TRAIN.AMP bf16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.TRAIN.AMP)

        self.data: ClassificationData = build_data(cfg, self.output_dir, self.dist.is_main)
        s = cfg.SOLVER
        # The effective LR, steps and EMA decay at this run's global batch (BATCH_SIZE x ACCUM_STEPS x processes):
        # the one rule of nasnet_det/engine/scaling.py, which `nasnet-det plan` prints too. MAX_STEPS counts steps
        # of REFERENCE_BATCH_SIZE images; REFERENCE_BATCH_SIZE 0 keeps every value as written.
        self.schedule = classification_schedule(s, self.dist.world_size, len(self.data.train))
        per_rank = len(ShardedEpochSampler(len(self.data.train), self.dist.rank, self.dist.world_size))
        self.steps_per_epoch = per_rank // s.BATCH_SIZE // s.ACCUM_STEPS
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"training set too small: {len(self.data.train)} images over {self.dist.world_size} process(es) "
                f"give {per_rank} per process, fewer than SOLVER.BATCH_SIZE x SOLVER.ACCUM_STEPS = "
                f"{s.BATCH_SIZE} x {s.ACCUM_STEPS}")
        if self.steps_per_epoch != self.schedule.steps_per_epoch:  # `plan` would print other epochs than we run
            raise RuntimeError(f"steps per epoch: the sampler gives {self.steps_per_epoch}, engine/scaling.py "
                               f"counts {self.schedule.steps_per_epoch}")
        self.total_steps = self.schedule.steps
        random_seed(cfg.SEED)  # identical initial weights on every process
        model = build_model(cfg, self.data.num_classes, self.data.image_size)
        if cfg.MODEL.NASNET.WEIGHTS:
            self._load_initial_weights(model, cfg.MODEL.NASNET.WEIGHTS)
        model.to(self.device)  # keeps the layout MODEL.NASNET.CHANNELS_LAST gave the weights
        self.channels_last = model.channels_last  # batches are moved to the device in that layout
        self.model = model
        self.ema = ModelEma(model, self.schedule.ema_decay, warmup=s.EMA_WARMUP) if s.EMA_DECAY > 0 else None
        self.ddp_model: nn.Module = model
        if self.dist.distributed:
            if cfg.TRAIN.SYNC_BN and cuda:
                self.ddp_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # SOLVER.AUX_WEIGHT 0 with an aux head: the loss does not compute the head (steps.py), so its
            # parameters get no gradient, which DDP must be told to expect (else it fails at the next step). The
            # head stays in the network: checkpoints keep the config's architecture.
            aux_unused = model.aux_head is not None and s.AUX_WEIGHT == 0
            self.ddp_model = DistributedDataParallel(
                self.ddp_model, device_ids=[self.device.index] if cuda else None,
                find_unused_parameters=cfg.TRAIN.FIND_UNUSED_PARAMETERS or leaves_input_unused(model.genotype)
                or aux_unused)
        self.optimizer = build_optimizer(cfg, model, lr=self.schedule.lr)
        # Augmentation and drop-path masks must differ between processes (weights were seeded alike).
        random_seed(cfg.SEED, 7919 * self.dist.rank)

        self.scheduler = build_scheduler(cfg, self.optimizer, self.total_steps, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        states = dict(optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler)
        if self.ema is not None:
            states["ema_state_dict"] = self.ema.module
        self.checkpointer = TrainingCheckpointer(model, self.output_dir, cfg.TRAIN.KEEP_CHECKPOINTS,
                                                 self.dist.is_main, verify=self._check_resumable, **states)
        self.state = TrainState()
        self.metrics = MetricsWriter(self.output_dir, self.dist.is_main, cfg.TRAIN.TENSORBOARD)
        self.val_loader = DataLoader(
            self.data.val, batch_size=cfg.TRAIN.EVAL_BATCH_SIZE, collate_fn=self.data.collate_fn,
            sampler=ShardedEpochSampler(len(self.data.val), self.dist.rank, self.dist.world_size, shuffle=False),
            num_workers=cfg.DATA.NUM_WORKERS, pin_memory=cuda,
            generator=torch.Generator().manual_seed(cfg.SEED))  # keeps the global RNG untouched
        self._log_acc: dict[str, float] = {"loss": 0.0, "correct": 0, "count": 0}
        self._new_skipped: set[str] = set()  # this process's corrupt training images not yet gathered
        self._last_log_time = time.perf_counter()
        self._last_saved_step = -1
        self._last_eval: dict[str, float] = {}
        self._last_eval_step = -1

    # ---- checkpoints
    def _load_initial_weights(self, model: NASNet, path: str) -> None:
        if is_named_weights(path):  # timm://nasnetalarge, pretrainedmodels://nasnetamobile (models/hub.py)
            logger.info("initialised weights from %s: %s", path, load_named_weights(model, path))
            return
        payload = read_intact_checkpoint(path)
        check_same_arch(payload["arch"], model.arch, path, ignore=("num_classes", "aux_head"))
        report = load_state_dict_report(model, payload.get("ema_state_dict") or payload["state_dict"])
        logger.info("initialised weights from %s: %s", path, report)

    def _check_resumable(self, payload: dict, path: Path) -> None:
        check_same_arch(payload["arch"], self.model.arch, path)
        missing = [k for k in ("optimizer", "scheduler", "step") if k not in payload]
        if missing:
            raise ValueError(f"{path} has no training state ({', '.join(missing)}); it is an exported model. "
                             "To start from its weights set MODEL.NASNET.WEIGHTS instead")

    def checkpoints(self) -> list[Path]:
        """OUTPUT_DIR/checkpoints/ckpt_<step>.pth files, oldest (lowest step) first."""
        return self.checkpointer.checkpoints()

    def last_checkpoint(self) -> Path | None:
        """The checkpoint to resume from (see :meth:`TrainingCheckpointer.last_checkpoint`); None if none."""
        return self.checkpointer.last_checkpoint()

    def save(self) -> Path:
        """Write a resumable checkpoint (rank 0) and point ``last_checkpoint`` at it (collective)."""
        self._gather_skipped()
        rng_states = [None] * self.dist.world_size
        if self.dist.distributed:
            dist.all_gather_object(rng_states, capture_rng_state())
        else:
            rng_states = [capture_rng_state()]
        self._last_saved_step = step = self.state.step
        return self.checkpointer.save_step(
            step, epoch=self.state.epoch, samples_in_epoch=self.state.samples_in_epoch,
            skipped_paths=sorted(self.state.skipped_paths), rng_states=rng_states, world_size=self.dist.world_size,
            total_steps=self.total_steps, schedule=self.schedule.as_dict(), config=self.cfg.dump(),
            # A rerun of a finished run reuses this instead of evaluating (and logging) the same step again.
            last_eval=self._last_eval if self._last_eval_step == step else None)

    def resume(self, path: str | Path | None = None) -> Path:
        """Restore model, optimizer, scheduler, scaler, EMA, data position and RNG from ``path`` (default: the
        last checkpoint; a damaged one is named and the newest intact older one used). Returns the file used."""
        path, extra = self.checkpointer.load_newest_intact(Path(path) if path else None)
        check_same_global_batch(extra.get("schedule"), self.schedule, path)
        upgrade_former_rmsprop_state(self.optimizer, extra["step"])
        if extra.get("total_steps") not in (None, self.total_steps):
            logger.warning("%s was trained for %s total steps, this run plans %s: the LR and drop-path schedules "
                           "change from here", path, extra["total_steps"], self.total_steps)
        # The optimizer and scheduler states hold the LR the checkpoint trained at, which differs when the global
        # batch changed (another process count) or BASE_LR was edited: this run's effective LR decides from here.
        trained_at = sorted(set(self.scheduler.base_lrs))
        if set_base_lr(self.optimizer, self.scheduler, self.schedule.lr) and self.dist.is_main:
            saved = extra.get("schedule") or {}
            logger.warning("%s was trained at LR %s (global batch %s); this run's effective LR is %.6g (global "
                           "batch %d): continuing at that", path, ", ".join(f"{lr:.6g}" for lr in trained_at),
                           saved.get("global_batch", "unrecorded"), self.schedule.lr, self.schedule.global_batch)
        self.state = TrainState(extra["step"], extra["epoch"], extra["samples_in_epoch"],
                                set(extra.get("skipped_paths") or ()))
        rng_states = extra.get("rng_states") or []
        if extra.get("world_size") == self.dist.world_size and len(rng_states) == self.dist.world_size:
            restore_rng_state(rng_states[self.dist.rank])
        else:
            random_seed(self.cfg.SEED + 1000 * self.state.step, self.dist.rank)
        self._last_saved_step = self.state.step
        if extra.get("last_eval") is not None:
            self._last_eval, self._last_eval_step = extra["last_eval"], self.state.step
        self.metrics.resume_at(self.state.step)
        if self.dist.is_main:
            # Records the interrupted run wrote after its last checkpoint are redone; a corrupt line elsewhere than
            # the last raises naming the file and line.
            truncate_metrics(self.metrics.path, self.state.step)
            logger.info("resumed from %s at step %d (epoch %d, %d samples into it)", path, self.state.step,
                        self.state.epoch, self.state.samples_in_epoch)
        return path

    def _clear_previous_run(self) -> None:
        # A fresh run in a used folder must not mix its log, curves, exports or checkpoints with the old run's.
        old = self.checkpoints()
        if old or (self.output_dir / LAST_CHECKPOINT).is_file():
            logger.warning("not resuming: deleting %d old checkpoint(s) in %s", len(old), self.output_dir)
        remove_files([*old, self.output_dir / LAST_CHECKPOINT, *(self.output_dir / name for name in RUN_OUTPUTS)])
        self.metrics.close()
        shutil.rmtree(self.metrics.tensorboard_dir, ignore_errors=True)

    # ---- data
    def _train_batches(self) -> tuple[Iterator, int]:
        """Micro-batches of the current epoch from the current position on, and the optimizer steps they make."""
        cfg, d = self.cfg, self.dist
        skip = self.state.samples_in_epoch // d.world_size
        sampler = ShardedEpochSampler(len(self.data.train), d.rank, d.world_size, cfg.SEED, self.state.epoch,
                                      shuffle=True, skip=skip)
        loader = DataLoader(
            self.data.train, batch_size=cfg.SOLVER.BATCH_SIZE, sampler=sampler, drop_last=True,
            collate_fn=self.data.collate_fn, num_workers=cfg.DATA.NUM_WORKERS,
            pin_memory=self.device.type == "cuda",
            # Worker seeds come from this generator, not the global RNG, so resuming does not shift it.
            generator=torch.Generator().manual_seed(train_loader_seed(cfg.SEED, self.state.epoch, skip, d.rank)))
        return iter(loader), len(loader) // cfg.SOLVER.ACCUM_STEPS

    # ---- loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batches: Iterator) -> None:
        s = self.cfg.SOLVER
        self.model.set_drop_path_progress(self.state.step / self.total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        skipped: list[str] = []

        def micro_batches():
            for _ in range(s.ACCUM_STEPS):
                batch = next(batches)
                if len(batch) > 2:
                    skipped.extend(batch[2])
                yield to_device(batch, self.device, self.channels_last)

        stats = accumulate_gradients(self.ddp_model, micro_batches(), s.ACCUM_STEPS, s.AUX_WEIGHT,
                                     s.LABEL_SMOOTHING, self.scaler, self._autocast())
        grad_norm = None
        if s.CLIP_GRAD_NORM > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), s.CLIP_GRAD_NORM))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._log_acc["lr"] = self.optimizer.param_groups[0]["lr"]  # this step's LR, before the schedule moves on
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.step)
        self.state.step += 1
        self.state.samples_in_epoch += s.ACCUM_STEPS * s.BATCH_SIZE * self.dist.world_size
        for k in ("loss", "correct", "count"):
            self._log_acc[k] += stats[k]
        self._new_skipped.update(skipped)
        if grad_norm is not None:
            self._log_acc["grad_norm"] = grad_norm
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"loss is {stats['loss']} at step {self.state.step}; lower SOLVER.BASE_LR "
                                     "or check the data")

    def _gather_skipped(self) -> None:
        """Merge every process's newly met corrupt training images into the state (collective)."""
        new = all_gather_union(self._new_skipped) - self.state.skipped_paths
        self._new_skipped = set()
        if new:
            self.state.skipped_paths |= new
            if self.dist.is_main:
                logger.warning("%d corrupt training image(s) skipped so far", self.state.skipped_images)

    def _log_train(self, pbar) -> None:
        acc = self._log_acc
        loss, correct, count = all_reduce_sum([acc["loss"], acc["correct"], acc["count"]], self.device)
        self._gather_skipped()
        now = time.perf_counter()
        record = {"epoch": self.state.epoch, "loss": loss / max(count, 1),
                  "top1": 100.0 * correct / max(count, 1),
                  "lr": acc.get("lr", self.optimizer.param_groups[0]["lr"]),
                  "images_per_s": count / max(now - self._last_log_time, 1e-9),
                  "skipped_images": self.state.skipped_images}
        if "grad_norm" in acc:
            record["grad_norm"] = acc["grad_norm"]
        self.metrics.write("train", self.state.step, **record)
        if pbar is not None:
            pbar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{record['top1']:.1f}", lr=f"{record['lr']:.3g}")
        self._log_acc = {"loss": 0.0, "correct": 0, "count": 0}
        self._last_log_time = now

    def _sync_buffers(self) -> None:
        # DDP broadcasts rank 0's BN statistics at the start of each forward, so after the last training
        # forward each process holds its own, and each process's EMA has averaged its own; make every process
        # evaluate and end with rank 0's (the ones its checkpoints hold). EMA weights are equal already.
        if self.dist.distributed:
            modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
            for module in modules:
                for buf in module.buffers():
                    dist.broadcast(buf, 0)

    def run_eval(self, record: bool = True) -> dict[str, float]:
        """Evaluate the weights (and the EMA); ``record`` appends the results to metrics.jsonl."""
        self._sync_buffers()
        autocast = self._autocast()
        # The unwrapped model: evaluation shards may differ in batch count, and DDP's forward is collective.
        result = evaluate(self.model, self.val_loader, self.device, autocast, self.channels_last)
        if result["skipped_images"] and self.dist.is_main:
            logger.warning("%d corrupt validation image(s) skipped (each replaced by the next readable one)",
                           result["skipped_images"])
        if record:
            self.metrics.write("eval", self.state.step, epoch=self.state.epoch, **result)
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.val_loader, self.device, self._autocast(), self.channels_last)
            if record:
                self.metrics.write("eval_ema", self.state.step, epoch=self.state.epoch, **ema)
            result = {**{f"raw_{k}": v for k, v in result.items() if k != "skipped_images"}, **ema}
        self._last_eval, self._last_eval_step = result, self.state.step
        if self.dist.is_main:
            logger.info("step %d: eval top-1 %.2f%% (error %.2f%%), top-5 %.2f%%", self.state.step,
                        result["top1"], result["error"], result["top5"])
        return result

    def train(self, resume: bool | None = None, interrupt_at_step: int | None = None) -> dict[str, Any]:
        """Train to ``total_steps``, then evaluate, export ``model_final.pth`` and plot. Returns the final
        evaluation plus ``step``, ``epoch``, ``train_skipped_images`` and ``val_skipped_images``.

        ``resume``: True = continue from OUTPUT_DIR's last checkpoint and raise FileNotFoundError if there is
        none; False = start fresh, deleting OUTPUT_DIR's old checkpoints and outputs; None = TRAIN.AUTO_RESUME
        (True: resume when a checkpoint exists, else start fresh; old checkpoints are never deleted).
        """
        cfg = self.cfg
        if self.dist.is_main:
            self.checkpointer.remove_stale_temp_files()
        explicit = resume is True
        resume = cfg.TRAIN.AUTO_RESUME if resume is None else resume
        last = self.last_checkpoint() if resume else None
        if last is not None:
            self.resume(last)
        elif explicit:
            raise FileNotFoundError(f"cannot resume: {self.output_dir} has no {LAST_CHECKPOINT} file and no "
                                    "checkpoints/ckpt_*.pth; run without --resume to start fresh")
        elif self.dist.is_main:
            self._clear_previous_run()
        if self.dist.is_main:
            logger.info("data: %s; %d steps (%d per epoch), batch %d x %d accum x %d processes", self.data.description,
                        self.total_steps, self.steps_per_epoch, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.ACCUM_STEPS,
                        self.dist.world_size)
            logger.info("schedule: %s", self.schedule.describe())
            self._write_schedule()
        eval_period = cfg.TRAIN.EVAL_PERIOD
        pbar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True) \
            if self.dist.is_main else None
        self.ddp_model.train()
        try:
            while self.state.step < self.total_steps:
                batches, steps_left = self._train_batches()
                for _ in range(steps_left):
                    if self.state.step >= self.total_steps:
                        break
                    self.train_step(batches)
                    step = self.state.step
                    if pbar is not None:
                        pbar.update(1)
                    end_of_epoch = self.state.samples_in_epoch // self.dist.world_size + \
                        cfg.SOLVER.BATCH_SIZE * cfg.SOLVER.ACCUM_STEPS > self._epoch_len()
                    if end_of_epoch:
                        self.state.epoch += 1
                        self.state.samples_in_epoch = 0
                    last = step == self.total_steps
                    if step % cfg.TRAIN.LOG_PERIOD == 0 or last:
                        self._log_train(pbar)
                    # The final evaluation runs before the final checkpoint, which records it.
                    if (eval_period > 0 and step % eval_period == 0) or (eval_period <= 0 and end_of_epoch) or last:
                        self.run_eval()
                    if step % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or last:
                        self.save()
                    if interrupt_at_step is not None and step >= interrupt_at_step:
                        self.metrics.close()
                        return {"interrupted_at_step": step}
                if steps_left == 0:  # position was at the very end of an epoch
                    self.state.epoch += 1
                    self.state.samples_in_epoch = 0
        finally:
            if pbar is not None:
                pbar.close()
        self._sync_buffers()
        # Resumed at the end from a checkpoint without its evaluation (older format, or a shorter MAX_STEPS now):
        # evaluate once and checkpoint the result, so that running the command again adds no eval row.
        evaluate_now = self._last_eval_step != self.state.step
        if evaluate_now:
            self.run_eval()
        if evaluate_now or self._last_saved_step != self.state.step:
            self.save()
        self._gather_skipped()
        final = dict(self._last_eval)
        final.update(step=self.state.step, epoch=self.state.epoch, train_skipped_images=self.state.skipped_images,
                     val_skipped_images=final.pop("skipped_images"))
        if self.dist.is_main:
            self._finish(final)
        barrier()
        self.metrics.close()
        return final

    def _write_schedule(self) -> None:
        """OUTPUT_DIR/schedule.json: the effective settings this run trains with, where, and in which precision."""
        record = {**self.schedule.as_dict(), "start_step": self.state.step, "device": describe_device(self.device),
                  "amp": str(self.amp_dtype or torch.float32).removeprefix("torch.")}
        atomic_write(self.output_dir / SCHEDULE_FILE, json.dumps(record, indent=2) + "\n")

    def _epoch_len(self) -> int:
        return len(ShardedEpochSampler(len(self.data.train), self.dist.rank, self.dist.world_size))

    def _finish(self, final: dict[str, Any]) -> None:
        from nasnet_det.classification.export import export_backbone
        from nasnet_det.classification.plots import plot_training_curves

        record = {**final, "global_batch": self.schedule.global_batch, "effective_lr": self.schedule.lr}
        atomic_write(self.output_dir / "final_metrics.json", json.dumps(record, indent=2) + "\n")
        last = self.last_checkpoint()
        if last is not None:
            export_backbone(last, self.output_dir / "model_final.pth")
        plot_training_curves(self.metrics.path, self.output_dir / "training_curves.png")
        logger.info("final: top-1 error %.2f%% (top-5 acc %.2f%%); outputs in %s", final["error"], final["top5"],
                    self.output_dir)


def train(cfg, resume: bool | None = None, interrupt_at_step: int | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` from ``cfg`` and run it (see :meth:`Trainer.train`)."""
    return Trainer(cfg).train(resume=resume, interrupt_at_step=interrupt_at_step)
