"""Writes that a kill cannot tear, reads that name a damaged file, cleanup of our own stale temp files, and
full-disk errors that name the file.

Every file a later run reads (checkpoints, ``last_checkpoint``, generated data folders, journals, reports)
is written to a temporary name in the same folder and renamed over the target (``os.replace`` is atomic on
POSIX and Windows), so a reader sees the old file or the new one, never half of one. Temporary names are
``.<target>.<pid>-<random>.tmp``: :func:`remove_stale_tmp` deletes those whose writer process is gone.

A write that fails because the disk is full raises :class:`DiskFullError` (an ``OSError`` with errno
``ENOSPC``) whose one-line message names the file and says the disk is full: ``torch.save`` otherwise reports
it as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, SQLite as ``database or disk is
full`` or ``disk I/O error``, a plain write as ``[Errno 28]`` without a path. The commands print that line
(``nasnet_det.utils.errors``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"
# .<name>.<pid>-<random>.tmp (ours, with the writer's pid) or .<name>.<random>.tmp (earlier versions), where
# <random> is tempfile's 8 characters: other hidden .tmp files are left alone.
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")


def target_of_tmp(path: str | os.PathLike) -> Path:
    """The file a temporary of :func:`tmp_path_for` stands for (``path`` itself if it is not one): what a
    message should name."""
    path = Path(path)
    m = _TMP_RE.match(path.name)
    return path.with_name(m["target"]) if m else path


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


# errno values that mean "the disk is full" (a quota counts: the user frees space the same way).
_DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device",
                     **({errno.EDQUOT: "disk quota exceeded"} if hasattr(errno, "EDQUOT") else {})}
_SQLITE_FULL, _SQLITE_IOERR = 13, 10  # SQLite's result codes (module constants only from Python 3.11)
# Free bytes under which an error that hides its errno counts as a full disk: the write that failed needed more.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write failed because the disk (or the user's quota) is full. ``str()`` is the one-line message,
    naming the file (or the folder) and saying the disk is full."""

    def __str__(self) -> str:
        return str(self.strerror)


def disk_full_message(path: str | os.PathLike, folder: bool = False, key: str = "",
                      code: int = errno.ENOSPC) -> str:
    """``no space left on device: cannot write PATH: the disk holding FOLDER is full; ...``. ``folder``: the
    file is not known (e.g. a library's write), ``path`` is the folder it was writing in (called ``key``)."""
    path = Path(path)
    reason = _DISK_FULL_ERRNOS.get(code, _DISK_FULL_ERRNOS[errno.ENOSPC])
    where = f"cannot write in {key + ' ' if key else ''}{path}" if folder else f"cannot write {path}"
    return (f"{reason}: {where}: the disk holding {path if folder else path.parent} is full; free some space "
            f"there (or choose another {key or 'output folder'}) and rerun the same command to continue")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then its ``__cause__`` (else ``__context__``), and so on."""
    chain, seen, e = [], set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def full_disk_error(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (itself, then its ``__cause__`` / ``__context__``) that says the disk is
    full: a :class:`DiskFullError` (preferred: it names the file), an ``OSError`` with errno ENOSPC / EDQUOT,
    or SQLite's SQLITE_FULL. None when the chain does not say so. ``torch.save`` to a file object raises a
    ``RuntimeError`` (inline_container.cc: unexpected pos) whose context is the write's ENOSPC ``OSError``."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, DiskFullError):
            return e
    for e in chain:
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return e
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
            return e
    return None


def _hides_its_errno(e: BaseException) -> bool:
    """Errors a full disk causes without saying so: SQLite's "disk I/O error" (a WAL journal on a full disk),
    ``torch.save`` to a path (its C++ stream drops the errno)."""
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_IOERR
    return isinstance(e, RuntimeError) and "inline_container" in str(e)


def nearly_full(path: str | os.PathLike) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) has < NEARLY_FULL_BYTES free
    for this user (root may use the reserved blocks)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < NEARLY_FULL_BYTES


def as_disk_full_error(exc: BaseException, path: str | os.PathLike, folder: bool = False,
                       key: str = "") -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` naming ``path`` (or the file the OS error names) when a full disk
    caused it, else None: the chain says so (:func:`full_disk_error`), or it holds an error that hides its
    errno while ``path``'s disk is :func:`nearly_full`."""
    cause = full_disk_error(exc)
    if cause is None:
        cause = next((e for e in _chain(exc) if _hides_its_errno(e)), None)
        if cause is None or not nearly_full(path):
            return None
    if isinstance(cause, DiskFullError):
        return DiskFullError(cause.errno, cause.strerror, cause.filename)
    code = cause.errno if isinstance(cause, OSError) else errno.ENOSPC
    named = getattr(cause, "filename", None)
    if named:  # the OS error knows the file: more precise than the folder we were given (ours, not its temporary)
        path, folder = target_of_tmp(named), False
    return DiskFullError(code, disk_full_message(path, folder, key, code), str(path))


@contextlib.contextmanager
def disk_full_errors(path: str | os.PathLike, folder: bool = False, key: str = "") -> Iterator[None]:
    """Within the block, an error caused by a full disk becomes a :class:`DiskFullError` naming ``path`` (a
    file, or with ``folder`` the folder being written, e.g. ``key`` OUTPUT_DIR). Other errors pass as they are.
    Wrap a library's writes (savefig, detectron2's writers, SQLite) and a command's whole run with it."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        full = as_disk_full_error(e, path, folder, key)
        if full is None:
            raise
        raise full from e


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` only when the block ends without an error. A full
    disk raises :class:`DiskFullError` naming ``path`` (the old file is kept, the temporary removed)."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a write mode")
    path = Path(path)
    with disk_full_errors(path):  # also the flush and fsync: a full disk often shows only there
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
    """``torch.save`` through a temporary file and a rename, so a kill never leaves a torn file (and a full disk
    raises :class:`DiskFullError` naming ``path``)."""
    import torch  # here, not at module level: the pipeline driver writes manifests without loading torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path)`` through :func:`atomic_open` (a kill leaves the previous plot, a full disk is a
    :class:`DiskFullError` naming ``path``), then the figure is closed whatever happened."""
    import matplotlib.pyplot as plt  # here: only the plotting callers have matplotlib loaded

    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


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


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created) for the block; another holder makes it a ValueError
    saying ``busy``. The OS drops the lock when the process dies, so a killed job never leaves a stale one.
    Without POSIX locks (not Unix) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(busy) from None
        yield
