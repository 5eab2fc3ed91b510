"""The crash-safe part of both trainers' checkpointers (fvcore ``Checkpointer`` subclasses), and start-over.

fvcore writes checkpoint and ``last_checkpoint`` pointer in place, so a kill during a save leaves a torn file.
Here both go through a temporary file and a rename; the temporaries a kill leaves behind are removed when the
next run starts (only those whose writer is gone: :func:`nasnet_det.utils.io.remove_stale_tmp`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fvcore.common.checkpoint import Checkpointer

from nasnet_det.utils.io import atomic_torch_save, atomic_write, remove_stale_tmp

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


class CrashSafeCheckpointer(Checkpointer):
    """``save`` and ``tag_last_checkpoint`` are atomic. Subclasses choose the payload (:meth:`write`), what
    happens after a save (:meth:`after_save`: pruning) and the folders their writes use (:attr:`tmp_folders`)."""

    def save(self, name: str, **extra: Any) -> None:
        """Atomically write ``save_dir/<name>.pth`` (model, checkpointables, ``extra``) and point
        ``last_checkpoint`` at it (no-op without ``save_dir`` or ``save_to_disk``)."""
        if not self.save_dir or not self.save_to_disk:
            return
        path = Path(self.save_dir) / f"{name}.pth"
        states = {key: obj.state_dict() for key, obj in self.checkpointables.items()}
        self.write(path, states, extra)
        self.tag_last_checkpoint(path.relative_to(self.save_dir).as_posix())
        self.after_save(path)

    def write(self, path: Path, states: dict[str, Any], extra: dict[str, Any]) -> None:
        """fvcore's layout: ``{"model": state_dict, <checkpointable>: state, **extra}``."""
        atomic_torch_save({"model": self.model.state_dict(), **states, **extra}, path)

    def after_save(self, path: Path) -> None:
        """Called with the file just written and tagged."""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(Path(self.save_dir) / LAST_CHECKPOINT, last_filename_basename)

    @property
    def tmp_folders(self) -> list[Path]:
        return [Path(self.save_dir)] if self.save_dir else []

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temporaries of saves a killed process left in :attr:`tmp_folders`; returns them."""
        removed = [p for folder in self.tmp_folders for p in remove_stale_tmp(folder)]
        for path in removed:
            logger.info("removed %s, left by an interrupted save", path)
        return removed


def remove_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Start over: delete those of ``paths`` that exist (an earlier run's checkpoints, pointer, metrics);
    returns the ones deleted."""
    removed = []
    for path in map(Path, paths):
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed
