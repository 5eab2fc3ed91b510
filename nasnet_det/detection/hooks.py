"""The detection trainer's own hooks (``nasnet_det.detection.trainer.Trainer.build_hooks`` orders them): the drop-path
schedule, exact resume (RNG states of every process, the data stream's position, the metrics' histories), the
metrics flush and the skipped-image count."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventWriter, JSONWriter
from fvcore.common.history_buffer import HistoryBuffer
from torch.utils.data import DataLoader

from nasnet_det.detection.backbone import set_drop_path_progress
from nasnet_det.detection.data import SkippingLoader
from nasnet_det.engine.metrics import truncate_metrics
from nasnet_det.engine.rng import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"  # detectron2's JSONWriter


def is_checkpoint_iteration(iteration: int, period: int, max_iter: int) -> bool:
    """Whether detectron2's ``PeriodicCheckpointer`` saves after ``iteration`` (every ``period``, and the last)."""
    return (iteration + 1) % period == 0 or iteration >= max_iter - 1


class DropPathSchedule(HookBase):
    """ScheduledDropPath: drop probability grows linearly with training progress (slim / TF detector)."""

    def before_step(self) -> None:
        progress = self.trainer.iter / max(1, self.trainer.max_iter)
        set_drop_path_progress(self.trainer.model, progress)


def reseeded_rng(seed: int, start_iter: int, rank: int) -> int | None:
    """The seed of ``rank``'s generators when a resumed run cannot restore that rank's own state: distinct per
    rank and per resume point, reproducible from ``SEED`` (< 0: None, detectron2's random seed)."""
    if seed < 0:
        return None
    return int(np.random.SeedSequence([seed, start_iter, rank]).generate_state(1)[0] % 2**31)


def train_loader_seed(seed: int, rank: int, start_iter: int = 0) -> int | None:
    """The seed of ``rank``'s training-loader generator (its workers' seeds derive from it: detectron2's
    ``worker_init_reset_seed``) for a run starting at ``start_iter``: distinct per rank, so that every rank's
    workers do not draw the same augmentation, and per resume point, so that a resumed run does not replay the
    draws its start did. Rank 0 of a fresh run keeps ``seed`` itself (< 0: None, a random seed)."""
    if seed < 0:
        return None
    if rank == 0 and start_iter == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, start_iter]).generate_state(1)[0] % 2**31)


def reseed_train_loader(loader: Any, seed: int | None) -> bool:
    """Seed the generator of the ``torch.utils.data.DataLoader`` inside ``loader`` (a :class:`SkippingLoader` of
    detectron2's train loader, aspect-ratio grouped or not). The loader draws its workers' base seed from that
    generator lazily, when its iteration starts, so this takes effect until then. Returns whether it could."""
    inner = loader
    for _ in range(4):  # SkippingLoader -> AspectRatioGroupedDataset -> DataLoader
        if isinstance(inner, DataLoader):
            break
        inner = inner.loader if isinstance(inner, SkippingLoader) else getattr(inner, "dataset", None)
    if seed is None or not isinstance(inner, DataLoader) or inner.generator is None:
        return False
    inner.generator.manual_seed(seed)
    return True


class ExactResume(HookBase):
    """Makes a resumed run continue like an uninterrupted one: checkpoints the RNG states (ROI sampling,
    augmentation, drop-path) of every process, restarts the training sampler where it stopped, and drops the
    ``metrics.json`` rows of iterations the interrupted run did after its last checkpoint (they are redone).

    Only rank 0 saves, so every rank's state reaches the checkpoint through :meth:`gather_rng_states`, which
    :class:`GatherRngStates` calls on every rank, collectively, right before each save. A run resumed on another
    number of processes cannot continue each process's draws: every rank is seeded anew, differently, and the
    log says so."""

    HISTORY = 100  # last values per metric kept for the writers' smoothing windows (20 iterations)

    def __init__(self) -> None:
        self.pending: dict | None = None
        self.rng_states: list[dict] | None = None  # every rank's, captured after iteration rng_iteration
        self.rng_iteration = -1

    def gather_rng_states(self) -> None:
        """Every rank's RNG state, gathered on every rank (a collective: all ranks call it at the same point)."""
        self.rng_states = comm.all_gather(capture_rng_state())
        self.rng_iteration = self.trainer.iter

    def state_dict(self) -> dict:
        storage = getattr(self.trainer, "storage", None)
        history = {k: [(float(v), int(i)) for v, i in buf.values()[-self.HISTORY:]]
                   for k, buf in (storage.histories().items() if storage is not None else ())}
        loader = getattr(self.trainer, "data_loader", None)
        # the unreadable images met so far: a resumed run keeps counting from there (data/skipped_images)
        skipped = list(loader.skipped) if isinstance(loader, SkippingLoader) else []
        gathered = self.rng_states if self.rng_iteration == getattr(self.trainer, "iter", None) else None
        state = {"rng": gathered[comm.get_rank()] if gathered else capture_rng_state(), "history": history,
                 "skipped_images": skipped}
        if gathered:  # a save outside the gathering points (finish_completed_run) holds the saving rank's only
            state["rng_per_rank"] = gathered
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict

    def restore_rng(self, state: dict, start_iter: int) -> None:
        """This rank's RNG state from ``state`` when it was saved by as many processes as run now; else a fresh
        seed per rank (:func:`reseeded_rng`), said in the log."""
        world, rank = comm.get_world_size(), comm.get_rank()
        per_rank = state.get("rng_per_rank")
        if per_rank is None and world == 1:  # a checkpoint written before per-rank states: its saver's state
            per_rank = [state["rng"]]
        if per_rank is not None and len(per_rank) == world:
            restore_rng_state(per_rank[rank])
            return
        cfg = getattr(self.trainer, "cfg", None)
        seed = reseeded_rng(int(cfg.get("SEED", -1)) if cfg is not None else -1, start_iter, rank)
        seed_all_rng(seed)
        saved = (f"the RNG states of {len(per_rank)} process(es)" if per_rank is not None
                 else "rank 0's RNG state only (written by an older nasnet-det)")
        logger.warning("resuming at iteration %d on %d process(es), but the checkpoint holds %s: rank %d's "
                       "generators are seeded anew (seed %s), so random draws (ROI sampling, augmentation, "
                       "drop-path) do not continue the interrupted run's", start_iter, world, saved, rank,
                       "random" if seed is None else seed)

    def before_train(self) -> None:
        trainer = self.trainer
        start = trainer.start_iter
        loader = trainer.data_loader
        sampler = getattr(loader, "resumable_sampler", None)
        if sampler is not None and start > 0:
            # images this rank has drawn: trainer.cfg holds the effective batch (nasnet_det/engine/scaling.py)
            sampler.start = start * (trainer.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        cfg = getattr(trainer, "cfg", None)
        if start > 0 and cfg is not None:
            reseed_train_loader(loader, train_loader_seed(int(cfg.get("SEED", -1)), comm.get_rank(), start))
        if self.pending is not None and start > 0:
            self.restore_rng(self.pending, start)
            # The smoothed values in metrics.json (medians over 20 iterations) then match an uninterrupted run's.
            # Only the histories: the latest values were already written before the checkpoint.
            for key, values in self.pending.get("history", {}).items():
                buf = HistoryBuffer()
                for value, iteration in values:
                    buf.update(value, iteration)
                trainer.storage.histories()[key] = buf
            if isinstance(loader, SkippingLoader) and comm.is_main_process():  # rank 0's list was saved
                loader.skipped[:] = self.pending.get("skipped_images", [])
            self.pending = None
        if start > 0 and comm.is_main_process():
            # the rows of iterations >= start are redone; a torn or foreign line is dropped, not reported
            truncate_metrics(os.path.join(trainer.cfg.OUTPUT_DIR, METRICS_FILE), start - 1, "iteration", strict=False,
                             in_place=True)


class GatherRngStates(HookBase):
    """Runs on every rank, before the checkpointer (which runs on rank 0 only): at each iteration that ends with
    a save, every rank's RNG state is gathered into ``exact_resume`` for the checkpoint."""

    def __init__(self, checkpoint_period: int, exact_resume: ExactResume):
        self.period = checkpoint_period
        self.exact_resume = exact_resume

    def after_step(self) -> None:
        if is_checkpoint_iteration(self.trainer.iter, self.period, self.trainer.max_iter):
            self.exact_resume.gather_rng_states()


class WriteMetricsAtCheckpoints(HookBase):
    """Flushes metrics.json right before each checkpoint, so that the metrics on disk always reach the newest
    checkpoint: a run killed after it resumes there with its log complete (rows after it are dropped and redone)."""

    def __init__(self, checkpoint_period: int, writers: list[EventWriter]):
        self.period = checkpoint_period
        self.writers = [w for w in writers if isinstance(w, JSONWriter)]

    def after_step(self) -> None:
        if is_checkpoint_iteration(self.trainer.iter, self.period, self.trainer.max_iter):
            for writer in self.writers:
                writer.write()


class SkippedImagesMetric(HookBase):
    """Puts the number of unreadable training images skipped so far into the event storage (metrics.json)."""

    def after_step(self) -> None:
        loader = self.trainer.data_loader
        if isinstance(loader, SkippingLoader):
            self.trainer.storage.put_scalar("data/skipped_images", len(loader.skipped), smoothing_hint=False)
