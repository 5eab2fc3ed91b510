"""Process plumbing of every launcher and child: SIGTERM as an interrupt, children that die with their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping

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


#: the process that started this one, as it was when this module was first imported (early in every tool, before
#: the seconds of torch / detectron2 imports and setup): a worker that asks to die with its launcher only after
#: those seconds passes it, so that a launcher killed in the meantime still ends the worker (the request alone
#: would never fire: the worker has already been handed to another parent). Not for ``preexec_fn`` use: a forked
#: child inherits its parent's value.
PARENT_PID_AT_IMPORT = os.getppid()


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask Linux to SIGKILL this process when the process that started it dies.

    Children are started by a launcher (torchrun puts them in their own session, detectron2's ``launch`` and
    the search's worker pool spawn them, the pipeline runs each stage's tool): without this, a ``kill -9`` of
    the launcher leaves them running, writing into the folder a resumed run is writing into (or holding a
    GPU). With ``parent_pid``, a parent that died before the request took effect ends this process at once.
    Also usable as ``Popen(preexec_fn=die_with_parent)``. Returns False where ``prctl`` is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return True


# torch's CPU threads are OpenMP's (libgomp): after each parallel region its idle threads spin, waiting for the
# next one, before they sleep. Processes that share the cores (the pretrain stage's gloo processes, the search's
# workers, a second job) then spend each other's time spinning: on a loaded 2-core machine a smoke detector
# iteration took ~5 s instead of ~1.5 s (docs/pipeline.md, "OpenMP waiting", has the measurements). PASSIVE makes
# them sleep at once. libgomp reads the variable when it loads, so it must be in a child's environment from its
# start.
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
STAGE_OMP_WAIT_POLICY = "PASSIVE"


def omp_wait_policy(environ: Mapping[str, str] | None = None) -> str:
    """The OpenMP wait policy for the processes a pipeline starts: the user's ``OMP_WAIT_POLICY`` in ``environ``
    (default: this process's) when set, else :data:`STAGE_OMP_WAIT_POLICY`."""
    environ = os.environ if environ is None else environ
    return environ.get(OMP_WAIT_POLICY) or STAGE_OMP_WAIT_POLICY
