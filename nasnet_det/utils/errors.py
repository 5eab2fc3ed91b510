"""How every command reports bad input: :class:`BadInputError`, the one-line message of an error, the
``error:`` line and exit code of :func:`exit_2_on_bad_input`, and the check of an output folder."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasnet_det.utils.io import DiskFullError, full_disk_error


class BadInputError(ValueError):
    """Bad input found by a check of ours; the message names the file or key and what was expected."""


def _yaml_error_types() -> tuple[type[BaseException], ...]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - yacs depends on PyYAML
        return ()
    return (yaml.YAMLError,)


# NotADirectoryError / PermissionError: an OUTPUT_DIR or data path that is a file or not writable.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, NotADirectoryError,
                                                     IsADirectoryError, PermissionError, *_yaml_error_types())


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Unless ``ok``: ``ValueError`` in the one-line form of every config check, ``KEY=VALUE: expected ...``."""
    if not ok:
        raise ValueError(f"{key}={value!r}: expected {expected}")


def is_int(value: Any, minimum: int | None = None) -> bool:
    """``value`` is an integer, not a bool (which Python counts as one), and at least ``minimum`` where given."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def require_int(value: Any, key: str, minimum: int) -> None:
    """:func:`require` that ``value`` is an integer (not a bool) >= ``minimum``."""
    require(is_int(value, minimum), key, value, f"an integer >= {minimum}")


def bad_input_message(exc: BaseException, file: str | None = None) -> str:
    """The one-line text of a bad-input error.

    A KeyError's str() is the repr of its message: use the message. A YAML syntax error becomes
    ``FILE is not valid YAML: PROBLEM at line L, column C`` (``file`` where the error names none). A bare OS
    error gets its file name.
    """
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, _yaml_error_types()):
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        name = getattr(mark, "name", None) or file or "config file"
        return f"{name} is not valid YAML: {problem}{where}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def exit_2_on_bad_input(command: Callable[..., int]) -> Callable[..., int]:
    """Bad input (a missing file, a config mismatch, a YAML syntax error, an unwritable OUTPUT_DIR) ends a
    command with one ``error:`` line and exit code 2 instead of a traceback. A diverged training run
    (detectron2's ``FloatingPointError`` for a NaN / inf loss) and a full disk (the line names the file, see
    :class:`nasnet_det.utils.io.DiskFullError`) end with one line and exit code 1."""

    @functools.wraps(command)
    def wrapped(*args, **kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except BAD_INPUT_ERRORS as e:
            logging.getLogger(__name__).debug("details", exc_info=True)
            print(f"error: {bad_input_message(e)}", file=sys.stderr)
            return 2
        except FloatingPointError as e:
            first = str(e).splitlines()[0] if str(e) else "loss is not finite"
            hint = "" if "BASE_LR" in first else " (lower SOLVER.BASE_LR or check the data and annotations)"
            print(f"error: training diverged: {first}{hint}", file=sys.stderr)
            return 1
        except Exception as e:
            full = full_disk_error(e)  # the command's own run wraps it as a DiskFullError naming the file
            if full is None:
                raise
            logging.getLogger(__name__).debug("details", exc_info=True)
            if not isinstance(full, DiskFullError):  # a write outside the command's own wrapping: no path known
                full = f"no space left on device: a write failed because the disk is full ({full})"
            print(f"error: {full}", file=sys.stderr)
            return 1

    return wrapped


def check_output_dir(path: str | os.PathLike, key: str = "OUTPUT_DIR") -> Path:
    """Create ``path`` if needed and check that it is a writable folder; raises ``NotADirectoryError`` /
    ``PermissionError`` naming ``key`` and the path otherwise."""
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{key} {out}: {parent} is a file, not a folder; choose another {key}")
        if parent.exists():
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{key} {out} cannot be created ({e.strerror or e}); choose a writable "
                              f"{key}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"{key} {out} is not writable; choose a writable {key}")
    return out
