"""The frame every search runs in: one output directory, locked, optionally emptied of the previous run
(``--fresh``), with one journal and a ``summary.json`` (:func:`run_in_output_dir`), in which
:class:`~search.runner.SearchRunner`, the one search engine (every strategy, weight sharing included),
runs."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode

from nasnet_det.engine.checkpoint import remove_files
from nasnet_det.utils.io import exclusive_lock, remove_stale_tmp
from search.config import identity_of, upgrade_identity
from search.journal import DamagedJournalError, Journal
from search.outputs import write_json_atomic

log = logging.getLogger(__name__)
JOURNAL_NAME = "journal.sqlite"
LOCK_NAME = "journal.lock"
# What a fresh start deletes besides a session's own checkpoints: the journal (with SQLite's side files) and
# everything search.outputs.write_outputs and the session write.
RUN_FILES = (JOURNAL_NAME, JOURNAL_NAME + "-wal", JOURNAL_NAME + "-shm", "best_genotype*.json", "top_k.json",
             "summary.json", "rewards.png", "best_cells.png", "pareto.json", "pareto.png")


def run_in_output_dir(cfg: CfgNode, out: Path, fresh: bool, checkpoint_files: Iterable[str],
                      search: Callable[[Journal], dict[str, Any]]) -> dict[str, Any]:
    """Run ``search`` (which resumes or starts the search in its journal, writes its outputs and returns the
    summary, with ``problems``) in ``out``: locked; with ``fresh`` emptied first of the previous run's
    journal, outputs and ``checkpoint_files`` (glob patterns); the journal's identity claimed (an older form
    brought up to date first, a different one refused); ``summary.json`` written at the end."""
    checkpoint_files = tuple(checkpoint_files)
    out.mkdir(parents=True, exist_ok=True)
    with output_dir_lock(out):
        remove_stale_tmp(out)  # temporaries of writes a kill interrupted
        if fresh:
            remove_files(f for pattern in (*RUN_FILES, *checkpoint_files) for f in out.glob(pattern))
        journal = open_journal(out, str(cfg.SEARCH.DAMAGED_JOURNAL), checkpoint_files)
        try:
            # (JSON types: compared as stored)
            journal.claim(json.loads(json.dumps(identity_of(cfg))), cfg.dump(), upgrade=upgrade_identity)
            summary = search(journal)
        finally:
            journal.close()
        for line in summary["problems"]:
            log.warning("%s", line)
        write_json_atomic(out / "summary.json", summary)  # a kill never leaves a torn summary
    return summary


def open_journal(out: Path, damaged: str, checkpoint_files: tuple[str, ...]) -> Journal:
    """The output directory's journal; a damaged one stops the search with one line, or, with ``damaged``
    (``SEARCH.DAMAGED_JOURNAL``) ``restart``, is moved aside (never deleted) with the checkpoints that went
    with it, and the search starts again."""
    path = out / JOURNAL_NAME
    try:
        return Journal(path)
    except DamagedJournalError as e:
        if damaged != "restart":
            raise DamagedJournalError(f"{e}; to search again from the start, rerun with SEARCH.DAMAGED_JOURNAL "
                                      f"restart (it moves the journal aside to {JOURNAL_NAME}.damaged-<time>, "
                                      "deleting nothing)") from None
    suffix = ".damaged-" + time.strftime("%Y%m%dT%H%M%S")
    moved = [f for pattern in (JOURNAL_NAME, JOURNAL_NAME + "-wal", JOURNAL_NAME + "-shm", *checkpoint_files)
             for f in sorted(out.glob(pattern))]
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
