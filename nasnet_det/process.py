"""Process plumbing shared by the training tools."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


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
