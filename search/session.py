"""The frame every search runs in: one output directory, locked, optionally emptied of the previous run
(``--fresh``), with one journal and a ``summary.json``. :class:`~search.runner.SearchRunner`, the one search
engine (every strategy, weight sharing included), fills in :meth:`search`."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from fvcore.common.config import CfgNode

from nasnet_det.engine.checkpoint import remove_files
from nasnet_det.utils.io import exclusive_lock, remove_stale_tmp
from search.config import identity_of
from search.journal import DamagedJournalError, Journal
from search.outputs import write_json_atomic

log = logging.getLogger(__name__)
JOURNAL_NAME = "journal.sqlite"
LOCK_NAME = "journal.lock"
# What a fresh start deletes besides a session's own checkpoints: the journal (with SQLite's side files) and
# everything search.outputs.write_outputs and the session write.
RUN_FILES = (JOURNAL_NAME, JOURNAL_NAME + "-wal", JOURNAL_NAME + "-shm", "best_genotype*.json", "top_k.json",
             "summary.json", "rewards.png", "best_cells.png", "pareto.json", "pareto.png")


class SearchSession(ABC):
    """A search of ``cfg`` into ``output_dir`` (default ``cfg.OUTPUT_DIR``). ``fresh`` deletes the previous
    run's journal, checkpoints and outputs first (once the directory's lock is held)."""

    #: glob patterns of the session's own checkpoints (a fresh start deletes them)
    checkpoint_files: ClassVar[tuple[str, ...]] = ()
    #: brings a journal's identity written by an older version to today's form before comparing (None: as is)
    upgrade_identity: ClassVar[Callable[[dict[str, Any]], dict[str, Any]] | None] = None

    def __init__(self, cfg: CfgNode, output_dir: str | Path | None = None, fresh: bool = False):
        self.cfg, self.out, self.fresh = cfg, Path(output_dir or cfg.OUTPUT_DIR), fresh

    def identity(self) -> dict[str, Any]:
        """The settings that define what the journal's evaluations mean (JSON types: compared as stored)."""
        return json.loads(json.dumps(identity_of(self.cfg)))

    @abstractmethod
    def search(self, journal: Journal) -> dict[str, Any]:
        """Run (or resume) the search, write its outputs and return the summary (with ``problems``)."""

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        with output_dir_lock(self.out):
            remove_stale_tmp(self.out)  # temporaries of writes a kill interrupted
            if self.fresh:
                remove_files(f for pattern in (*RUN_FILES, *self.checkpoint_files) for f in self.out.glob(pattern))
            journal = self._open_journal()
            try:
                journal.claim(self.identity(), self.cfg.dump(), upgrade=type(self).upgrade_identity)
                summary = self.search(journal)
            finally:
                journal.close()
            for line in summary["problems"]:
                log.warning("%s", line)
            write_json_atomic(self.out / "summary.json", summary)  # a kill never leaves a torn summary
        return summary


    def _open_journal(self) -> Journal:
        """The output directory's journal; a damaged one stops the search with one line, or, with
        ``SEARCH.DAMAGED_JOURNAL restart``, is moved aside (never deleted) with the checkpoints that went with
        it, and the search starts again."""
        path = self.out / JOURNAL_NAME
        try:
            return Journal(path)
        except DamagedJournalError as e:
            if self.cfg.SEARCH.DAMAGED_JOURNAL != "restart":
                raise DamagedJournalError(f"{e}; to search again from the start, rerun with SEARCH.DAMAGED_JOURNAL "
                                          f"restart (it moves the journal aside to {JOURNAL_NAME}.damaged-<time>, "
                                          "deleting nothing)") from None
        suffix = ".damaged-" + time.strftime("%Y%m%dT%H%M%S")
        moved = [f for pattern in (JOURNAL_NAME, JOURNAL_NAME + "-wal", JOURNAL_NAME + "-shm",
                                   *self.checkpoint_files) for f in sorted(self.out.glob(pattern))]
        for f in moved:
            f.rename(f.with_name(f.name + suffix))
        log.warning("SEARCH.DAMAGED_JOURNAL restart: moved the damaged %s aside (%s); the search starts again",
                    path, ", ".join(f.name + suffix for f in moved))
        return Journal(path)


def output_dir_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``out/journal.lock`` so two searches never share an output directory (they would
    evaluate the same children twice and collide in the journal)."""
    return exclusive_lock(out / LOCK_NAME, f"{out} is in use by another search (lock {out / LOCK_NAME} is held); "
                                           "wait for it to finish or choose another OUTPUT_DIR")
