"""Log lines of this package on the console, for the commands that set up no logging of their own."""

from __future__ import annotations

import logging
import sys


class _PackageConsole(logging.StreamHandler):
    """The handler :func:`show_package_logs` adds (known by its type, so it is added once)."""


def show_package_logs() -> None:
    """This package's INFO and WARNING lines on stdout, as detectron2 prints its own, for the detection
    commands (which set up no logging of their own; where the application did, e.g. ``logging.basicConfig``,
    the records keep going there instead). DEBUG stays hidden: it carries the tracebacks of errors that are
    reported in one line. detectron2's ``setup_logger`` is not used: it stops propagation for good."""
    logger = logging.getLogger("nasnet_det")
    logger.setLevel(logging.INFO)
    if logging.getLogger().handlers or any(isinstance(h, _PackageConsole) for h in logger.handlers):
        return
    handler = _PackageConsole(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s [%(asctime)s %(name)s]: %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))
    logger.addHandler(handler)
