"""Writes that a kill cannot tear, reads that name a damaged file, and cleanup of our own stale temp files.

Every file a later run reads (checkpoints, ``last_checkpoint``, generated data folders, journals, reports)
is written to a temporary name in the same folder and renamed over the target (``os.replace`` is atomic on
POSIX and Windows), so a reader sees the old file or the new one, never half of one. Temporary names are
``.<target>.<pid>-<random>.tmp``: :func:`remove_stale_tmp` deletes those whose writer process is gone.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"
# .<name>.<pid>-<random>.tmp (ours, with the writer's pid) or .<name>.<random>.tmp (earlier versions), where
# <random> is tempfile's 8 characters: other hidden .tmp files are left alone.
_TMP_RE = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; the renamed result must get the permissions a plain open() or
# mkdir() gives (checkpoints shared with a group, data folders read by other users).
_UMASK = _process_umask()


def tmp_path_for(target: str | os.PathLike, directory: bool = False) -> Path:
    """A fresh temporary path next to ``target`` (created: an empty file, or a folder)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_tmp_prefix(target), suffix=TMP_SUFFIX))
        os.chmod(tmp, 0o777 & ~_UMASK)
        return tmp
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_tmp_prefix(target), suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` only when the block ends without an error."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a write mode")
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file and a rename, so a kill never leaves a torn file."""
    import torch  # here, not at module level: the pipeline driver writes manifests without loading torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling; it becomes ``path`` (replacing any old one) only when the block
    ends without an error. A kill while building leaves ``path`` as it was (absent, or the old complete one)."""
    path = Path(path)
    tmp = tmp_path_for(path, directory=True)
    try:
        yield tmp
        if path.exists():  # e.g. a partial folder written by an older, non-atomic version
            old = tmp_path_for(path, directory=True)
            os.rmdir(old)
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete our temporary files and folders in ``directory`` (not recursive) whose writer is no longer
    running (left by a killed run); returns what was removed. Missing folders are fine."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        m = _TMP_RE.match(entry.name)
        if not m or (m.group("pid") and _pid_alive(int(m.group("pid")))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# What torch.load raises for a truncated, empty or non-checkpoint file.
UNREADABLE_CHECKPOINT_ERRORS = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
                                UnicodeDecodeError, AttributeError, ImportError, IndexError, OSError)


class DamagedFileError(ValueError):
    """A file exists but cannot be read (truncated, empty, or another format). The message names it."""


def load_torch_file(path: str | os.PathLike, role: str = "checkpoint", weights_only: bool = False) -> Any:
    """``torch.load(path)`` on CPU; a missing file raises ``FileNotFoundError`` and an unreadable one
    :class:`DamagedFileError`, both naming ``role`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} {path} does not exist")
    if path.stat().st_size == 0:
        raise DamagedFileError(f"{role} {path} is empty (0 bytes; a write was interrupted?)")
    import torch  # see atomic_torch_save

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except UNREADABLE_CHECKPOINT_ERRORS as e:
        raise DamagedFileError(f"{role} {path} is not a readable PyTorch checkpoint (truncated, or another "
                               f"format?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
