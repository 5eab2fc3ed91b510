"""Lines written to a pipe by another process, each awaited until a deadline (a hung writer must not hang the
reader): the job server's answers (``helpers.jobs``) and the layout sweep's case outcomes."""

from __future__ import annotations

import os
import select
import time


class LineReader:
    """Reads a pipe's descriptor unbuffered: ``select`` sees only what is still in the pipe, so a line already
    taken into a Python file object's buffer would wait there for the writer's next line."""

    def __init__(self, fd: int):
        self.fd = fd
        self.eof = False  # the writer closed its end
        self._buffer = b""

    def readline(self, deadline: float | None = None) -> bytes | None:
        """The next line, without its newline; ``None`` at the end of the input (:attr:`eof` then says so) or when
        no whole line came by ``deadline`` (a ``time.monotonic()`` time; ``None``: however long it takes)."""
        while b"\n" not in self._buffer:
            if self.eof:
                return None
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            self.eof = not chunk
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line
