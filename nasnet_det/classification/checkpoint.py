"""Resumable training checkpoints: the engine's crash-safe fvcore ``Checkpointer`` writing our format.

Layout: ``OUTPUT_DIR/checkpoints/ckpt_<step>.pth`` and ``OUTPUT_DIR/last_checkpoint`` (the newest one's path
relative to OUTPUT_DIR). fvcore supplies the checkpointables (optimizer, scheduler, scaler, EMA: saved by
``state_dict()``, restored by ``load_state_dict()``) and the model loading with its key report. Changed here:

- files are ``nasnet-det/v1`` payloads (``arch`` + ``state_dict``), so export and ``MODEL.NASNET.WEIGHTS`` read them;
- checkpoint and pointer are written atomically (:class:`nasnet_det.engine.checkpoint.CrashSafeCheckpointer`);
- a damaged checkpoint is named and the newest intact older one is used instead;
- pruning keeps the newest ``keep`` files on disk, also those of an interrupted earlier session
  (fvcore's ``PeriodicCheckpointer`` only prunes what it wrote itself, and names files ``model_<iter>``,
  ``model_final`` included, which is our exported backbone's name);
- our own stale temporary files (``.*.tmp``, left by a kill during a write) are removed on start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from nasnet_det.engine.checkpoint import LAST_CHECKPOINT, CrashSafeCheckpointer
from nasnet_det.engine.scaling import ClassificationSchedule
from nasnet_det.models import NASNetArch
from nasnet_det.models.pretrained import read_checkpoint, save_checkpoint
from nasnet_det.utils.errors import BadInputError

logger = logging.getLogger(__name__)


class DamagedCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, zero bytes, not a checkpoint)."""


def read_intact_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``read_checkpoint``, with a torn or unreadable file reported as one error that names it."""
    try:
        return read_checkpoint(path)
    except FileNotFoundError:
        raise
    except ValueError as exc:  # not one of ours; the message names the file
        raise DamagedCheckpointError(str(exc)) from exc
    except Exception as exc:  # torn zip, 0 bytes, unpickling error
        raise DamagedCheckpointError(f"checkpoint {path} is damaged or unreadable "
                                     f"({type(exc).__name__}: {exc})") from exc


def check_same_arch(checkpoint_arch: dict, model_arch: dict, path: str | Path,
                    ignore: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming both archs if a checkpoint's network differs from the run's."""
    theirs, ours = NASNetArch.from_dict(checkpoint_arch, f"{path} arch"), NASNetArch.from_dict(model_arch)
    differ = theirs.differing_fields(ours, ignore)
    if differ:
        raise ValueError(
            f"checkpoint {path} holds a different network than this run (differs in {', '.join(differ)}):\n  "
            + "\n  ".join([*theirs.differences(ours, ignore, names=("checkpoint", "this run")),
                           f"checkpoint: {theirs.describe()}", f"this run:   {ours.describe()}"])
            + "\nuse another OUTPUT_DIR, or set MODEL.NASNET.* to the checkpoint's architecture")


class TrainingCheckpointer(CrashSafeCheckpointer):
    """``verify(payload, path)`` runs on every loaded payload before anything is restored (arch checks)."""

    def __init__(self, model: nn.Module, output_dir: str | os.PathLike, keep: int, save_to_disk: bool,
                 verify: Callable[[dict, Path], None] | None = None, **checkpointables: Any):
        super().__init__(model, str(output_dir), save_to_disk=save_to_disk, **checkpointables)
        self.output_dir = Path(output_dir)
        self.keep = keep
        self.verify = verify

    # ---- files
    def checkpoints(self) -> list[Path]:
        """OUTPUT_DIR/checkpoints/ckpt_<step>.pth files, oldest (lowest step) first."""
        found = []
        for path in (self.output_dir / "checkpoints").glob("ckpt_*.pth"):
            step = path.stem.removeprefix("ckpt_")
            if step.isdigit():
                found.append((int(step), path))
        return [path for _, path in sorted(found)]

    def last_checkpoint(self) -> Path | None:
        """The file ``last_checkpoint`` names or, when that file is missing (lost, or only checkpoints/ was
        copied) or names a missing file, the newest checkpoints/ckpt_*.pth; None if there is none."""
        pointer = self.output_dir / LAST_CHECKPOINT
        if pointer.is_file():
            path = self.output_dir / pointer.read_text(errors="replace").strip()
            if path.is_file():
                return path
            logger.warning("%s names %s, which does not exist", pointer, path)
        found = self.checkpoints()
        if found and self.save_to_disk:
            logger.warning("%s is missing or stale; using the newest checkpoint %s", pointer, found[-1])
        return found[-1] if found else None

    def get_checkpoint_file(self) -> str:
        return str(self.last_checkpoint() or "")

    @property
    def tmp_folders(self) -> list[Path]:
        return [self.output_dir, self.output_dir / "checkpoints"]

    # ---- save
    def write(self, path: Path, states: dict[str, Any], extra: dict[str, Any]) -> None:
        save_checkpoint(self.model, path, **states, **extra)

    def after_save(self, path: Path) -> None:
        """Prune: keep the newest ``keep`` checkpoints up to ``path``."""
        kept = self.checkpoints()
        if path in kept:  # files of later steps belong to an abandoned run (resumed before them): never count
            kept = kept[: kept.index(path) + 1]  # them, or they would push out the file just written
        for old in kept[: max(0, len(kept) - self.keep)]:
            old.unlink(missing_ok=True)

    def save_step(self, step: int, **extra: Any) -> Path:
        self.save(f"checkpoints/ckpt_{step:08d}", step=step, **extra)
        return self.output_dir / "checkpoints" / f"ckpt_{step:08d}.pth"

    # ---- load
    def _load_file(self, f: str) -> dict[str, Any]:
        payload = read_intact_checkpoint(f)
        if self.verify is not None:
            self.verify(payload, Path(f))
        payload["model"] = payload.pop("state_dict")
        for key in self.checkpointables:
            if payload.get(key) is None:
                payload.pop(key, None)
        if "ema_state_dict" in self.checkpointables and "ema_state_dict" not in payload:
            payload["ema_state_dict"] = payload["model"]  # a run without EMA: the average starts here
        return payload

    def load_newest_intact(self, path: Path | None = None) -> tuple[Path, dict[str, Any]]:
        """Load ``path`` (default: :meth:`last_checkpoint`); if it is damaged, say so and load the newest intact
        older checkpoint. Returns (the file loaded, its extra entries: step, epoch, RNG states, ...)."""
        first = path or self.last_checkpoint()
        if first is None:
            raise FileNotFoundError(f"{self.output_dir} has no {LAST_CHECKPOINT} file and no checkpoints/ckpt_*.pth")
        candidates = [Path(first)] + [p for p in reversed(self.checkpoints()) if p != Path(first)]
        damaged = []
        for candidate in candidates:
            try:
                return candidate, self.load(str(candidate))
            except DamagedCheckpointError as exc:
                damaged.append(candidate)
                if self.save_to_disk:  # main process
                    logger.warning("%s; trying the next older checkpoint", exc)
        raise DamagedCheckpointError(f"no intact checkpoint to resume from: {', '.join(map(str, damaged))} "
                                     "are damaged; delete them (or use --no-resume) to start over")


def check_same_global_batch(saved: dict[str, Any] | None, schedule: ClassificationSchedule, path: Path) -> None:
    """With ``SOLVER.REFERENCE_BATCH_SIZE`` > 0 the step count follows the global batch: a checkpoint's steps are
    steps of the batch it trained with (``saved``: its recorded schedule), so at another batch the rest of the run
    (its step count, LR and drop-path schedules) would train another number of images. Raises
    :class:`BadInputError` saying how to resume; a checkpoint without the record, or a run without a reference
    batch, passes."""
    if schedule.reference_batch <= 0 or not saved or "global_batch" not in saved:
        return
    old, new = int(saved["global_batch"]), schedule.global_batch
    if old == new:
        return
    processes = schedule.processes
    per_step = schedule.batch_per_process * processes
    if old % per_step == 0:
        keep = f"SOLVER.ACCUM_STEPS {old // per_step}"
    elif old % processes == 0:
        keep = f"SOLVER.BATCH_SIZE {old // processes} SOLVER.ACCUM_STEPS 1 (or a split of it into BATCH_SIZE x " \
               "ACCUM_STEPS)"
    else:
        keep = f"a process count that divides it ({saved.get('processes', '?')} did)"
    raise BadInputError(
        f"{path} was trained at a global batch of {old} images per step, this run's is {new} (SOLVER.BATCH_SIZE "
        f"{schedule.batch_per_process} x SOLVER.ACCUM_STEPS {schedule.accum_steps} x {processes} process(es)): its "
        f"steps count other batches, so the rest of the schedule would train another number of images; resume "
        f"with a global batch of {old}: {keep}, or start over with --no-resume")
