"""The run's ledger: every trial, durable, in one SQLite file.

Only the controller writes it. A trial row is written when it is proposed
(state ``running``) and completed in one transaction when its scores arrive,
so a crash loses at most the trials in flight and never a finished one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY,
    recipe_hash TEXT NOT NULL,
    genome TEXT NOT NULL,
    recipe TEXT NOT NULL,
    state TEXT NOT NULL,
    fidelity INTEGER,
    scores TEXT,
    error TEXT,
    started REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS trials_by_hash ON trials (recipe_hash);
"""


@dataclass(frozen=True)
class TrialRecord:
    number: int
    recipe_hash: str
    genome: list[float]
    recipe: str
    state: str
    fidelity: int | None
    scores: dict[str, float] | None
    error: str | None
    started: float
    finished: float | None


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def start(self, recipe_hash: str, genome: list[float], recipe: str, fidelity: int | None) -> int:
        cur = self._db.execute(
            "INSERT INTO trials (recipe_hash, genome, recipe, state, fidelity, started) "
            "VALUES (?, ?, ?, 'running', ?, ?)",
            (recipe_hash, json.dumps(genome), recipe, fidelity, time.time()),
        )
        return int(cur.lastrowid)

    def finish(self, number: int, scores: dict[str, float] | None, error: str | None = None) -> None:
        state = "complete" if error is None else "failed"
        self._db.execute(
            "UPDATE trials SET state = ?, scores = ?, error = ?, finished = ? WHERE number = ?",
            (state, json.dumps(scores) if scores is not None else None, error, time.time(), number),
        )

    def find_finished(self, recipe_hash: str, fidelity: int | None) -> TrialRecord | None:
        """The first complete or failed trial of this recipe at this fidelity."""
        row = self._db.execute(
            "SELECT * FROM trials WHERE recipe_hash = ? AND state IN ('complete', 'failed') "
            "AND fidelity IS ? ORDER BY number LIMIT 1",
            (recipe_hash, fidelity),
        ).fetchone()
        return _record(row) if row else None

    def abandon_running(self) -> int:
        """Mark trials left 'running' by an interrupted run; returns how many."""
        cur = self._db.execute("UPDATE trials SET state = 'abandoned' WHERE state = 'running'")
        return cur.rowcount

    def trials(self, state: str | None = None) -> list[TrialRecord]:
        if state is None:
            rows = self._db.execute("SELECT * FROM trials ORDER BY number").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM trials WHERE state = ? ORDER BY number", (state,)
            ).fetchall()
        return [_record(r) for r in rows]


def _record(row) -> TrialRecord:
    return TrialRecord(
        number=row[0],
        recipe_hash=row[1],
        genome=json.loads(row[2]),
        recipe=row[3],
        state=row[4],
        fidelity=row[5],
        scores=json.loads(row[6]) if row[6] else None,
        error=row[7],
        started=row[8],
        finished=row[9],
    )
