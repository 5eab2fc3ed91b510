"""Process plumbing shared by the training tools."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from collections.abc import Iterator

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler or ``kill`` sends before it kills a job), raised as Ctrl-C's
    KeyboardInterrupt is, so the same cleanup runs: children stopped, the stage's manifest ``interrupted``."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere this does nothing:
    Python delivers signals there only). Later SIGTERMs are ignored, so they cannot cut the cleanup short (a
    scheduler that loses patience sends SIGKILL). The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when the process that started it dies.

    Training workers are started by a launcher (torchrun puts them in their own session; detectron2's
    ``launch`` spawns them): without this, a ``kill -9`` of the launcher (or of the pipeline above it) leaves
    the workers training on, writing checkpoints into the folder a resumed run is writing into. Returns False
    where ``prctl`` is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
