"""SQLite journal of every sampled architecture, and atomic controller checkpoints.

Each child is written as ``pending`` (with its decisions, genotype, the policy version that sampled it and
its sampling log-probability) before it is submitted to a worker, then updated to ``ok``, ``failed`` or
``lost`` when its evaluation ends. Finishing a child also gives it its place in the policy's update batches
(``batch``, ``slot``: the order in which children of its strategy finished), so a rerun knows which updates
were due, re-submits exactly the pending children and never repeats a finished one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasnet_det.genotypes import found_genotype
from nasnet_det.space import Genotype
from nasnet_det.utils.io import as_disk_full_error, atomic_torch_save

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    strategy TEXT NOT NULL,
    sample INTEGER NOT NULL,
    policy INTEGER NOT NULL,
    batch INTEGER,
    slot INTEGER,
    decisions TEXT NOT NULL,
    genotype TEXT NOT NULL,
    logprob REAL,
    status TEXT NOT NULL DEFAULT 'pending',
    reward REAL,
    seconds REAL,
    params INTEGER,
    error TEXT,
    accuracy REAL,
    latency_ms REAL,
    mult_adds INTEGER,
    backbone_params INTEGER,
    created REAL NOT NULL,
    finished REAL,
    UNIQUE (strategy, sample),
    UNIQUE (strategy, batch, slot)
);
CREATE INDEX IF NOT EXISTS evaluations_by_status ON evaluations (strategy, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Columns added after the first journals: (name, SQL type). An older journal gets them (NULL) on opening.
_ADDED_COLUMNS = (("accuracy", "REAL"), ("latency_ms", "REAL"), ("mult_adds", "INTEGER"),
                  ("backbone_params", "INTEGER"))


@dataclass
class Evaluation:
    id: int
    strategy: str
    sample: int                # sampling order within the strategy (seeds its sampler)
    policy: int                # policy updates the controller had received when it sampled this child
    batch: int | None          # policy update batch it belongs to (None while pending)
    slot: int | None           # finishing position within that batch
    decisions: list[int]
    genotype: dict[str, Any]
    logprob: float | None      # log-probability under the sampling policy (None for random search)
    status: str
    reward: float | None
    seconds: float | None
    params: int | None
    error: str | None
    # The objective's record (search/objective.py): the raw accuracy (reward is the objective's) and the
    # detection backbone's latency, mult-adds and params; None where nothing was profiled.
    accuracy: float | None = None
    latency_ms: float | None = None
    mult_adds: int | None = None
    backbone_params: int | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Evaluation:
        return cls(row["id"], row["strategy"], row["sample"], row["policy"], row["batch"], row["slot"],
                   json.loads(row["decisions"]), json.loads(row["genotype"]), row["logprob"], row["status"],
                   row["reward"], row["seconds"], row["params"], row["error"], row["accuracy"],
                   row["latency_ms"], row["mult_adds"], row["backbone_params"])

    def found_genotype(self) -> Genotype:
        """This child's cell as a found cell (validated, named ``search_{strategy}_{id}``)."""
        return found_genotype(self.genotype, self.strategy, self.id)


# The columns every journal has had (a table of that name without them is not ours).
_REQUIRED_COLUMNS = {"id", "strategy", "status", "decisions", "genotype", "reward"}


class DamagedJournalError(ValueError):
    """The journal file exists but is not a readable search journal (garbage, truncated, a foreign database)."""


class Journal:
    """One SQLite file per output directory. Safe to reopen; every write is committed immediately. Opening
    checks the file (SQLite's quick_check and the evaluations table's columns): a damaged one raises
    :class:`DamagedJournalError` naming it, before anything is written to it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.row_factory = sqlite3.Row
        try:
            problem = self._damage()
            if problem is None:
                # WAL + synchronous=NORMAL: a killed search loses nothing that was committed (only a power
                # cut can drop the last few), and a commit costs no fsync, which matters for cheap children.
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                columns = {r[1] for r in self.db.execute("PRAGMA table_info(evaluations)")}
        except sqlite3.DatabaseError as e:
            self.db.close()
            full = as_disk_full_error(e, self.path)  # SQLite calls it a "disk I/O error": not a damaged file
            if full is not None:
                raise full from e
            raise DamagedJournalError(f"{self.path} is not a readable search journal (SQLite: {e})") from None
        if problem is not None:
            self.db.close()
            raise DamagedJournalError(f"{self.path} is not a readable search journal ({problem})")
        if "sample" not in columns:
            self._upgrade_batch_synchronous()
        else:
            self._add_missing_columns(columns)

    def _damage(self) -> str | None:
        """What is wrong with an existing journal file (SQLite's quick_check, then our table), or None. Raises
        ``sqlite3.DatabaseError`` for a file that is no database at all."""
        rows = [r[0] for r in self.db.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            return "SQLite integrity check: " + "; ".join(map(str, rows))
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "evaluations" in tables:
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(evaluations)")}
            missing = sorted(_REQUIRED_COLUMNS - columns)
            if missing:
                return f"its evaluations table lacks the columns {', '.join(missing)}"
        elif tables - {"meta", "sqlite_sequence"}:
            return f"a database with other tables ({', '.join(sorted(tables))}), without the evaluations table"
        return None

    def _add_missing_columns(self, columns: set[str]) -> None:
        """A journal written before the cost columns existed gets them (empty for its children)."""
        missing = [(name, kind) for name, kind in _ADDED_COLUMNS if name not in columns]
        if missing:
            with self.db:
                for name, kind in missing:
                    self.db.execute(f"ALTER TABLE evaluations ADD COLUMN {name} {kind}")

    def _upgrade_batch_synchronous(self) -> None:
        """Rewrite a journal of the earlier batch-synchronous search in today's form. There, batch k was
        both the policy version that sampled its children and the update that used them, and an unfinished
        batch was the last one; its finished children get the first slots, in the order they finished."""
        with self.db:  # one transaction: a kill leaves the old journal or the new one
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("ALTER TABLE evaluations RENAME TO evaluations_batch_synchronous")
            self.db.execute("DROP INDEX IF EXISTS evaluations_by_status")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute("""
                INSERT INTO evaluations (id, strategy, sample, policy, batch, slot, decisions, genotype, logprob,
                                         status, reward, seconds, params, error, created, finished)
                SELECT id, strategy, ROW_NUMBER() OVER (PARTITION BY strategy ORDER BY id) - 1, batch,
                       CASE WHEN status = 'pending' THEN NULL ELSE batch END,
                       CASE WHEN status = 'pending' THEN NULL ELSE ROW_NUMBER() OVER (
                           PARTITION BY strategy, batch, status = 'pending' ORDER BY finished, id) - 1 END,
                       decisions, genotype, logprob, status, reward, seconds, params, error, created, finished
                FROM evaluations_batch_synchronous""")
            self.db.execute("DROP TABLE evaluations_batch_synchronous")

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def claim(self, identity: dict[str, Any], config_dump: str,
              upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """Record the settings that define what this journal's evaluations mean, or refuse (``ValueError``
        naming the differing keys) when it was written with others; ``upgrade`` brings an older form up to
        date before comparing. The full config is kept beside it for reference."""
        old = self.get_meta("identity")
        if old is not None and upgrade is not None:
            old = upgrade(old)
        if old is not None and old != identity:
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            self.close()
            raise ValueError(f"{self.path} was written with different settings ({', '.join(diff)}); "
                             "resume with the original config, choose a new OUTPUT_DIR, or start over with --fresh")
        self.set_meta("identity", identity)
        self.set_meta("config", config_dump)

    def add_pending(self, strategy: str, first_sample: int, policy: int,
                    samples: list[tuple[list[int], dict, float | None]]) -> list[Evaluation]:
        """Record freshly sampled children (decisions, genotype, log-prob), numbered from ``first_sample``,
        in one transaction before they are submitted (a rerun re-submits them unchanged)."""
        now, ids = time.time(), []
        with self.db:
            for i, (decisions, genotype, logprob) in enumerate(samples):
                cur = self.db.execute(
                    "INSERT INTO evaluations (strategy, sample, policy, decisions, genotype, logprob, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (strategy, first_sample + i, policy, json.dumps(decisions), json.dumps(genotype), logprob, now))
                ids.append(int(cur.lastrowid))
        return [self.get(i) for i in ids]

    def finish(self, eval_id: int, status: str, reward: float | None = None, seconds: float | None = None,
               params: int | None = None, error: str | None = None, batch_size: int = 1,
               costs: dict[str, Any] | None = None) -> Evaluation:
        """Record a child's result and append it to its strategy's update batches: it becomes slot
        ``k % batch_size`` of batch ``k // batch_size``, where k counts the strategy's finished children.
        ``costs``: any of accuracy, latency_ms, mult_adds, backbone_params (the objective's record)."""
        costs = {k: v for k, v in (costs or {}).items() if v is not None}
        bad = sorted(set(costs) - {name for name, _ in _ADDED_COLUMNS})
        if bad:
            raise ValueError(f"unknown cost fields {bad}")
        if status not in ("ok", "failed", "lost"):
            raise ValueError(f"status must be 'ok', 'failed' or 'lost', got {status!r}")
        with self.db:  # one transaction: the count and the update cannot be torn apart by a kill
            row = self.db.execute("SELECT strategy, status FROM evaluations WHERE id=?", (eval_id,)).fetchone()
            if row is None or row["status"] != "pending":
                raise ValueError(f"child {eval_id} is not pending in {self.path}")
            k = self.count(row["strategy"]) - self.count(row["strategy"], "pending")
            extra = "".join(f", {name}=?" for name in costs)
            self.db.execute(f"UPDATE evaluations SET status=?, reward=?, seconds=?, params=?, error=?, finished=?, "
                            f"batch=?, slot=?{extra} WHERE id=?",
                            (status, reward, seconds, params, error, time.time(), k // batch_size,
                             k % batch_size, *costs.values(), eval_id))
        return self.get(eval_id)

    def get(self, eval_id: int) -> Evaluation:
        return Evaluation.from_row(self.db.execute("SELECT * FROM evaluations WHERE id=?", (eval_id,)).fetchone())

    def batch(self, strategy: str, batch: int) -> list[Evaluation]:
        """The finished children of one policy update batch, in the order they finished."""
        rows = self.db.execute("SELECT * FROM evaluations WHERE strategy=? AND batch=? ORDER BY slot",
                               (strategy, batch)).fetchall()
        return [Evaluation.from_row(r) for r in rows]

    def samples(self, strategy: str, first: int, n: int) -> list[Evaluation]:
        """The strategy's samples ``first`` .. ``first + n - 1`` that exist, in sampling order (an indexed
        look-up: its cost does not grow with the journal)."""
        rows = self.db.execute("SELECT * FROM evaluations WHERE strategy=? AND sample>=? AND sample<? "
                               "ORDER BY sample", (strategy, first, first + n)).fetchall()
        return [Evaluation.from_row(r) for r in rows]

    def pending(self) -> list[Evaluation]:
        """Children sampled but not finished (in flight when the last run stopped), in sampling order."""
        rows = self.db.execute("SELECT * FROM evaluations WHERE status='pending' ORDER BY id").fetchall()
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


def finished_by_batch(evals: list[Evaluation]) -> dict[int, list[Evaluation]]:
    """Finished evaluations (ok, failed, lost) grouped by policy update batch, in finishing order."""
    groups: dict[int, list[Evaluation]] = {}
    for e in sorted((e for e in evals if e.status != "pending"), key=lambda e: (e.batch, e.slot)):
        groups.setdefault(e.batch, []).append(e)
    return groups


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
        raise ValueError(f"controller checkpoint {path} cannot be read ({e}); delete it to rebuild the "
                         "controller by replaying the journal's finished batches") from None
