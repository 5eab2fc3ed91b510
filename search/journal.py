"""SQLite journal of every sampled architecture, and atomic controller checkpoints.

Each sample is written as ``pending`` (with its decisions, genotype and sampling log-probability) before it
is evaluated, then updated to ``ok``, ``failed`` or ``lost`` when its evaluation ends. A rerun therefore re-submits
exactly the pending samples of the interrupted batch and never repeats a finished one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasnet_det.models.pretrained import atomic_torch_save

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    strategy TEXT NOT NULL,
    batch INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    decisions TEXT NOT NULL,
    genotype TEXT NOT NULL,
    logprob REAL,
    status TEXT NOT NULL DEFAULT 'pending',
    reward REAL,
    seconds REAL,
    params INTEGER,
    error TEXT,
    created REAL NOT NULL,
    finished REAL,
    UNIQUE (strategy, batch, slot)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Evaluation:
    id: int
    strategy: str
    batch: int
    slot: int
    decisions: list[int]
    genotype: dict[str, Any]
    logprob: float | None
    status: str
    reward: float | None
    seconds: float | None
    params: int | None
    error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Evaluation:
        return cls(row["id"], row["strategy"], row["batch"], row["slot"], json.loads(row["decisions"]),
                   json.loads(row["genotype"]), row["logprob"], row["status"], row["reward"], row["seconds"],
                   row["params"], row["error"])


class Journal:
    """One SQLite file per output directory. Safe to reopen; every write is committed immediately."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.row_factory = sqlite3.Row
        try:
            # WAL + synchronous=NORMAL: a killed search loses nothing that was committed (only a power
            # cut can drop the last few), and a commit costs no fsync, which matters for cheap children.
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path} is not a search journal (SQLite error: {e})") from None

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_pending(self, strategy: str, batch: int, samples: list[tuple[list[int], dict, float | None]]
                    ) -> list[Evaluation]:
        """Record a freshly sampled batch, all at once (one transaction), before anything is evaluated."""
        now = time.time()
        with self.db:
            for slot, (decisions, genotype, logprob) in enumerate(samples):
                self.db.execute(
                    "INSERT INTO evaluations (strategy, batch, slot, decisions, genotype, logprob, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (strategy, batch, slot, json.dumps(decisions), json.dumps(genotype), logprob, now))
        return self.batch(strategy, batch)

    def finish(self, eval_id: int, status: str, reward: float | None = None, seconds: float | None = None,
               params: int | None = None, error: str | None = None) -> None:
        if status not in ("ok", "failed", "lost"):
            raise ValueError(f"status must be 'ok', 'failed' or 'lost', got {status!r}")
        with self.db:
            self.db.execute("UPDATE evaluations SET status=?, reward=?, seconds=?, params=?, error=?, finished=? "
                            "WHERE id=?", (status, reward, seconds, params, error, time.time(), eval_id))

    def batch(self, strategy: str, batch: int) -> list[Evaluation]:
        rows = self.db.execute("SELECT * FROM evaluations WHERE strategy=? AND batch=? ORDER BY slot",
                               (strategy, batch)).fetchall()
        return [Evaluation.from_row(r) for r in rows]

    def all(self, strategy: str | None = None) -> list[Evaluation]:
        if strategy is None:
            rows = self.db.execute("SELECT * FROM evaluations ORDER BY id").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM evaluations WHERE strategy=? ORDER BY id", (strategy,)).fetchall()
        return [Evaluation.from_row(r) for r in rows]

    def count(self, strategy: str, status: str | None = None) -> int:
        if status is None:
            q, args = "SELECT COUNT(*) FROM evaluations WHERE strategy=?", (strategy,)
        else:
            q, args = "SELECT COUNT(*) FROM evaluations WHERE strategy=? AND status=?", (strategy, status)
        return int(self.db.execute(q, args).fetchone()[0])

    def strategies(self) -> list[str]:
        rows = self.db.execute("SELECT strategy FROM evaluations GROUP BY strategy ORDER BY MIN(id)")
        return [r[0] for r in rows]


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a controller checkpoint atomically."""
    atomic_torch_save(state, path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a foreign or corrupted file: say which
        raise ValueError(f"controller checkpoint {path} cannot be read ({e}); delete it to restart the "
                         "controller from the journal's last batch") from None
