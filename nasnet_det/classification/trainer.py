"""The one training loop: CIFAR-10 final training and ImageNet pretraining of any genotype at any N@F.

Single process, multi-GPU and multi-node (torchrun + DDP), AMP and channels_last on CUDA, gradient
accumulation, ScheduledDropPath, auxiliary-head loss, label smoothing, gradient clipping, weight EMA.
Checkpoints are resumable mid-epoch: the shuffle of an epoch depends only on (seed, epoch), and a
checkpoint records how many samples of the current epoch were consumed plus every process's RNG state.

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
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from nasnet_det.classification.data import ClassificationData, build_data
from nasnet_det.classification.distributed import (
    DistInfo,
    ShardedEpochSampler,
    all_gather_union,
    all_reduce_sum,
    barrier,
    init_distributed,
)
from nasnet_det.classification.metrics import MetricsWriter, read_metrics, topk_correct
from nasnet_det.classification.optim import ModelEma, build_optimizer, build_scheduler
from nasnet_det.models import NASNetArch, nasnet_from_cfg
from nasnet_det.models.nasnet import NASNet
from nasnet_det.models.pretrained import load_state_dict_report, read_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
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
    return nasnet_from_cfg(cfg, "cifar" if cfg.DATA.DATASET == "cifar10" else "imagenet", num_classes,
                           image_size=image_size)


def check_same_arch(checkpoint_arch: dict, model_arch: dict, path: str | Path,
                    ignore: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming both archs if a checkpoint's network differs from the run's."""
    theirs, ours = NASNetArch.from_dict(checkpoint_arch, f"{path} arch"), NASNetArch.from_dict(model_arch)
    differ = theirs.differing_fields(ours, ignore)
    if differ:
        raise ValueError(f"checkpoint {path} holds a different network than this run (differs in "
                         f"{', '.join(differ)}):\n  checkpoint: {theirs.describe()}\n"
                         f"  this run:   {ours.describe()}\n"
                         "use another OUTPUT_DIR, or set MODEL.NASNET.* to the checkpoint's architecture")


# ----------------------------------------------------------------------------------------------- steps
def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux_weight: float,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss incl. aux head, main loss, logits). Always calls ``model(x, return_aux=True)`` so DDP
    hooks fire; losses are computed in float32 even under autocast."""
    logits, aux_logits = model(x, return_aux=True)
    main = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    total = main
    if aux_logits is not None and aux_weight > 0:
        total = main + aux_weight * F.cross_entropy(aux_logits.float(), y, label_smoothing=label_smoothing)
    return total, main, logits


def accumulate_gradients(model: nn.Module, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         num_micro_batches: int, aux_weight: float, label_smoothing: float = 0.0,
                         scaler: torch.amp.GradScaler | None = None,
                         autocast: contextlib.AbstractContextManager | None = None) -> dict[str, float]:
    """Backpropagate ``num_micro_batches`` micro-batches into ``.grad`` as one batch of their union.

    Each micro-batch's mean loss is divided by the count, so k equal micro-batches give the gradient of
    one k-times larger batch. Under DDP, gradients are all-reduced only on the last micro-batch
    (``no_sync`` before), which is what makes accumulation cheap across processes.
    """
    stats = {"loss": 0.0, "correct": 0, "count": 0}
    for j, (x, y) in enumerate(micro_batches):
        last = j == num_micro_batches - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else \
            contextlib.nullcontext()
        with sync:
            with autocast or contextlib.nullcontext():
                total, main, logits = classification_loss(model, x, y, aux_weight, label_smoothing)
            scaled = total / num_micro_batches
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        stats["loss"] += float(main.detach()) * len(y)
        stats["correct"] += topk_correct(logits.detach(), y, (1,))[0]
        stats["count"] += len(y)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None,
             channels_last: bool = False) -> dict[str, float]:
    """Loss, top-1/top-5 accuracy and top-1 error (%) over the loader, summed over all processes, and
    ``skipped_images``: the distinct corrupt images the loader replaced (batches of ``(x, y, paths)``)."""
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0, 0, 0
    skipped: set[str] = set()
    for batch in loader:
        if len(batch) > 2:
            skipped.update(batch[2])
        x, y = _to_device(batch, device, channels_last)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        c1, c5 = topk_correct(logits, y, (1, 5))
        top1, top5, count = top1 + c1, top5 + c5, count + len(y)
    model.train(was_training)
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], device)
    skipped = all_gather_union(skipped)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    acc1 = 100.0 * top1 / count
    return {"loss": loss_sum / count, "top1": acc1, "top5": 100.0 * top5 / count, "error": 100.0 - acc1,
            "images": int(count), "skipped_images": len(skipped)}


def _to_device(batch, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch[0].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch[1].to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------- RNG
def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Builds everything from a config and runs :meth:`train`. ``interrupt_at_step`` stops a run after
    that step without its final checkpoint, as a preemption would (for resume drills and tests)."""

    def __init__(self, cfg, dist_info: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.TRAIN.DEVICE)
        self.device = self.dist.device
        self.output_dir = Path(cfg.OUTPUT_DIR)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        cuda = self.device.type == "cuda"
        self.channels_last = cfg.TRAIN.CHANNELS_LAST and cuda
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.TRAIN.AMP) if cuda else None
        if cfg.TRAIN.AMP != "none" and not cuda:
            logger.warning("TRAIN.AMP=%s needs CUDA; training in float32 on %s", cfg.TRAIN.AMP, self.device)

        self.data: ClassificationData = build_data(cfg, self.output_dir, self.dist.is_main)
        seed_everything(cfg.SEED)  # identical initial weights on every process
        model = build_model(cfg, self.data.num_classes, self.data.image_size)
        if cfg.MODEL.NASNET.WEIGHTS:
            self._load_initial_weights(model, cfg.MODEL.NASNET.WEIGHTS)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = self._new_ema() if cfg.SOLVER.EMA_DECAY > 0 else None
        self.ddp_model: nn.Module = model
        if self.dist.distributed:
            if cfg.TRAIN.SYNC_BN and cuda:
                self.ddp_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.ddp_model = DistributedDataParallel(
                self.ddp_model, device_ids=[self.device.index] if cuda else None,
                find_unused_parameters=cfg.TRAIN.FIND_UNUSED_PARAMETERS)
        self.optimizer = build_optimizer(cfg, model)
        # Augmentation and drop-path masks must differ between processes (weights were seeded alike).
        seed_everything(cfg.SEED + 7919 * self.dist.rank)

        s = cfg.SOLVER
        per_rank = len(ShardedEpochSampler(len(self.data.train), self.dist.rank, self.dist.world_size))
        self.steps_per_epoch = per_rank // s.BATCH_SIZE // s.ACCUM_STEPS
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"training set too small: {len(self.data.train)} images over {self.dist.world_size} process(es) "
                f"give {per_rank} per process, fewer than SOLVER.BATCH_SIZE x SOLVER.ACCUM_STEPS = "
                f"{s.BATCH_SIZE} x {s.ACCUM_STEPS}")
        self.total_steps = s.MAX_STEPS if s.MAX_STEPS > 0 else s.EPOCHS * self.steps_per_epoch
        self.scheduler = build_scheduler(cfg, self.optimizer, self.total_steps, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
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
        payload = read_checkpoint(path)
        check_same_arch(payload["arch"], model.arch, path, ignore=("num_classes", "aux_head"))
        report = load_state_dict_report(model, payload.get("ema_state_dict") or payload["state_dict"])
        logger.info("initialised weights from %s: %s", path, report)

    def _new_ema(self) -> ModelEma:
        return ModelEma(self.model, self.cfg.SOLVER.EMA_DECAY, warmup=self.cfg.SOLVER.EMA_WARMUP)

    def checkpoint_path(self, step: int) -> Path:
        return self.output_dir / "checkpoints" / f"ckpt_{step:08d}.pth"

    def checkpoints(self) -> list[Path]:
        """OUTPUT_DIR/checkpoints/ckpt_<step>.pth files, oldest (lowest step) first."""
        found = []
        for path in (self.output_dir / "checkpoints").glob("ckpt_*.pth"):
            step = path.stem.removeprefix("ckpt_")
            if step.isdigit():
                found.append((int(step), path))
        return [path for _, path in sorted(found)]

    def last_checkpoint(self) -> Path | None:
        """The checkpoint to resume from: the one the ``last_checkpoint`` file names or, when that file is
        missing (lost, or only checkpoints/ was copied), the newest checkpoints/ckpt_*.pth; None if there is
        none."""
        pointer = self.output_dir / LAST_CHECKPOINT
        if not pointer.is_file():
            found = self.checkpoints()
            if not found:
                return None
            if self.dist.is_main:
                logger.warning("%s is missing; using the newest checkpoint %s", pointer, found[-1])
            return found[-1]
        path = self.output_dir / pointer.read_text().strip()
        if not path.is_file():
            raise FileNotFoundError(f"{pointer} points to {path}, which does not exist; delete {pointer} "
                                    "to resume from the newest checkpoints/ckpt_*.pth instead")
        return path

    def save(self) -> Path | None:
        """Write a resumable checkpoint (rank 0) and point ``last_checkpoint`` at it."""
        self._gather_skipped()
        rng_states = [None] * self.dist.world_size
        if self.dist.distributed:
            dist.all_gather_object(rng_states, _rng_state())
        else:
            rng_states = [_rng_state()]
        self._last_saved_step = self.state.step
        if not self.dist.is_main:
            return None
        path = self.checkpoint_path(self.state.step)
        save_checkpoint(
            self.model, path, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), ema_state_dict=self.ema.state_dict() if self.ema else None,
            step=self.state.step, epoch=self.state.epoch, samples_in_epoch=self.state.samples_in_epoch,
            skipped_paths=sorted(self.state.skipped_paths), rng_states=rng_states, world_size=self.dist.world_size,
            total_steps=self.total_steps, config=self.cfg.dump())
        pointer = self.output_dir / LAST_CHECKPOINT
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(str(path.relative_to(self.output_dir)))
        tmp.replace(pointer)
        self._prune_checkpoints()
        return path

    def _prune_checkpoints(self) -> None:
        kept = self.checkpoints()
        for old in kept[: max(0, len(kept) - self.cfg.TRAIN.KEEP_CHECKPOINTS)]:
            old.unlink(missing_ok=True)

    def resume(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, scaler, EMA, data position and RNG from ``path``."""
        payload = read_checkpoint(path)
        check_same_arch(payload["arch"], self.model.arch, path)
        self.model.load_state_dict(payload["state_dict"])
        missing = [k for k in ("optimizer", "scheduler", "step") if k not in payload]
        if missing:
            raise ValueError(f"{path} has no training state ({', '.join(missing)}); it is an exported model. "
                             "To start from its weights set MODEL.NASNET.WEIGHTS instead")
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        if self.ema is not None:
            if payload.get("ema_state_dict") is not None:
                self.ema.load_state_dict(payload["ema_state_dict"])
            else:
                self.ema = self._new_ema()
        if payload.get("total_steps") not in (None, self.total_steps):
            logger.warning("%s was trained for %s total steps, this run plans %s: the LR and drop-path schedules "
                           "change from here", path, payload["total_steps"], self.total_steps)
        self.state = TrainState(payload["step"], payload["epoch"], payload["samples_in_epoch"],
                                set(payload.get("skipped_paths") or ()))
        rng_states = payload.get("rng_states") or []
        if payload.get("world_size") == self.dist.world_size and len(rng_states) == self.dist.world_size:
            _set_rng_state(rng_states[self.dist.rank])
        else:
            seed_everything(self.cfg.SEED + 1000 * self.state.step + self.dist.rank)
        self._last_saved_step = self.state.step
        self.metrics.resume_at(self.state.step)
        if self.dist.is_main:
            self._truncate_metrics(self.state.step)
            logger.info("resumed from %s at step %d (epoch %d, %d samples into it)", path, self.state.step,
                        self.state.epoch, self.state.samples_in_epoch)

    def _clear_previous_run(self) -> None:
        # A fresh run in a used folder must not mix its log, curves, exports or checkpoints with the old run's.
        old = sorted((self.output_dir / "checkpoints").glob("ckpt_*.pth"))
        if old or (self.output_dir / LAST_CHECKPOINT).is_file():
            logger.warning("not resuming: deleting %d old checkpoint(s) in %s", len(old), self.output_dir)
        for path in [*old, self.output_dir / LAST_CHECKPOINT, *(self.output_dir / name for name in RUN_OUTPUTS)]:
            path.unlink(missing_ok=True)
        self.metrics.close()
        shutil.rmtree(self.metrics.tensorboard_dir, ignore_errors=True)

    def _truncate_metrics(self, step: int) -> None:
        # Records the interrupted run wrote after its last checkpoint are redone; drop them, and a half-written
        # last line (read_metrics drops it; a corrupt line elsewhere raises naming the file and line).
        path = self.metrics.path
        if path.is_file():
            kept = [r for r in read_metrics(path) if r["step"] <= step]
            tmp = path.with_name(path.name + ".tmp")  # a kill mid-rewrite must not lose the history
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)

    # ---- data
    def _train_batches(self) -> Iterator:
        """Micro-batches of the current epoch from the current position on."""
        cfg, d = self.cfg, self.dist
        skip = self.state.samples_in_epoch // d.world_size
        sampler = ShardedEpochSampler(len(self.data.train), d.rank, d.world_size, cfg.SEED, self.state.epoch,
                                      shuffle=True, skip=skip)
        loader = DataLoader(
            self.data.train, batch_size=cfg.SOLVER.BATCH_SIZE, sampler=sampler, drop_last=True,
            collate_fn=self.data.collate_fn, num_workers=cfg.DATA.NUM_WORKERS,
            pin_memory=self.device.type == "cuda",
            # Worker seeds come from this generator, not the global RNG, so resuming does not shift it.
            generator=torch.Generator().manual_seed(cfg.SEED * 1_000_003 + self.state.epoch * 7919 + skip))
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
                yield _to_device(batch, self.device, self.channels_last)

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
            self.ema.update(self.model, num_updates=self.state.step)
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

    def run_eval(self) -> dict[str, float]:
        self._sync_buffers()
        autocast = self._autocast()
        # The unwrapped model: evaluation shards may differ in batch count, and DDP's forward is collective.
        result = evaluate(self.model, self.val_loader, self.device, autocast, self.channels_last)
        if result["skipped_images"] and self.dist.is_main:
            logger.warning("%d corrupt validation image(s) skipped (each replaced by the next readable one)",
                           result["skipped_images"])
        self.metrics.write("eval", self.state.step, epoch=self.state.epoch, **result)
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.val_loader, self.device, self._autocast(), self.channels_last)
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
                    if step % cfg.TRAIN.LOG_PERIOD == 0 or step == self.total_steps:
                        self._log_train(pbar)
                    if (eval_period > 0 and step % eval_period == 0) or (eval_period <= 0 and end_of_epoch):
                        self.run_eval()
                    if step % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or step == self.total_steps:
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
        if self._last_saved_step != self.state.step:
            self.save()
        self._gather_skipped()
        final = dict(self._last_eval) if self._last_eval_step == self.state.step else self.run_eval()
        final.update(step=self.state.step, epoch=self.state.epoch, train_skipped_images=self.state.skipped_images,
                     val_skipped_images=final.pop("skipped_images"))
        if self.dist.is_main:
            self._finish(final)
        barrier()
        self.metrics.close()
        return final

    def _epoch_len(self) -> int:
        return len(ShardedEpochSampler(len(self.data.train), self.dist.rank, self.dist.world_size))

    def _finish(self, final: dict[str, Any]) -> None:
        from nasnet_det.classification.export import export_backbone
        from nasnet_det.classification.plots import plot_training_curves

        (self.output_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        last = self.last_checkpoint()
        if last is not None:
            export_backbone(last, self.output_dir / "model_final.pth")
        plot_training_curves(self.metrics.path, self.output_dir / "training_curves.png")
        logger.info("final: top-1 error %.2f%% (top-5 acc %.2f%%); outputs in %s", final["error"], final["top5"],
                    self.output_dir)


def train(cfg, resume: bool | None = None, interrupt_at_step: int | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` from ``cfg`` and run it (see :meth:`Trainer.train`)."""
    return Trainer(cfg).train(resume=resume, interrupt_at_step=interrupt_at_step)
