"""The run's ledger: every evaluation, durable, in one SQLite file.

Only the controller writes it. A row is one evaluation of one recipe at one
fidelity (a candidate promoted by successive halving has a row per rung). It is
written when the evaluation is submitted (state ``running``) and completed in
one transaction when its scores arrive, so a crash loses at most what was in
flight and never a finished evaluation. ``seq`` numbers completions in the order
the controller saw them: resume replays them in that order.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import EvomergeError

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY,
    candidate INTEGER NOT NULL,
    rung INTEGER NOT NULL,
    recipe_hash TEXT NOT NULL,
    genome TEXT NOT NULL,
    recipe TEXT NOT NULL,
    state TEXT NOT NULL,
    fidelity INTEGER,
    scores TEXT,
    error TEXT,
    started REAL NOT NULL,
    finished REAL,
    seconds REAL,
    seq INTEGER
);
CREATE INDEX IF NOT EXISTS trials_by_hash ON trials (recipe_hash);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    start INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    closed_asks INTEGER
);
"""


@dataclass(frozen=True)
class Session:
    """One run of the controller: where in the completion order it began, its budget, and how
    many suggestions had been asked when it stopped asking (budget, wall time or patience), if it
    did. A resume replays each stretch of completions under the rules of the session that made it."""

    start: int
    budget: int
    closed_asks: int | None


@dataclass(frozen=True)
class TrialRecord:
    number: int
    candidate: int
    rung: int
    recipe_hash: str
    genome: list[float]
    recipe: str
    state: str
    fidelity: int | None
    scores: dict[str, float] | None
    error: str | None
    started: float
    finished: float | None
    seconds: float | None
    seq: int | None


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(trials)")}
        if "seq" not in columns:
            self._db.close()
            raise EvomergeError(
                f"{self.path} was written by an older evomerge (no completion order); "
                "start a new run with `evomerge search`."
            )

    def close(self) -> None:
        self._db.close()

    def start(
        self, candidate: int, rung: int, recipe_hash: str, genome: list[float], recipe: str, fidelity: int | None
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO trials (candidate, rung, recipe_hash, genome, recipe, state, fidelity, started) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            (candidate, rung, recipe_hash, json.dumps(genome), recipe, fidelity, time.time()),
        )
        return int(cur.lastrowid)

    def finish(
        self, number: int, scores: dict[str, float] | None, error: str | None = None, seconds: float | None = None
    ) -> None:
        state = "complete" if error is None else "failed"
        with self._db:  # one transaction: the row and its place in the completion order
            self._db.execute("BEGIN IMMEDIATE")
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM trials").fetchone()
            self._db.execute(
                "UPDATE trials SET state = ?, scores = ?, error = ?, finished = ?, seconds = ?, seq = ? "
                "WHERE number = ?",
                (state, json.dumps(scores) if scores is not None else None, error, time.time(), seconds, seq, number),
            )

    def begin_session(self, budget: int) -> None:
        (start,) = self._db.execute("SELECT COUNT(*) FROM trials WHERE seq IS NOT NULL").fetchone()
        self._db.execute("INSERT INTO sessions (start, budget) VALUES (?, ?)", (start, budget))

    def close_asks(self, asks: int) -> None:
        """The current session asks no more suggestions after ``asks`` in all."""
        self._db.execute(
            "UPDATE sessions SET closed_asks = ? WHERE id = (SELECT MAX(id) FROM sessions)", (asks,)
        )

    def sessions(self) -> list[Session]:
        rows = self._db.execute("SELECT start, budget, closed_asks FROM sessions ORDER BY id").fetchall()
        return [Session(*r) for r in rows]

    def get(self, number: int) -> TrialRecord:
        return _record(self._db.execute("SELECT * FROM trials WHERE number = ?", (number,)).fetchone())

    def completions(self) -> list[TrialRecord]:
        """Finished evaluations (complete or failed) in the order they completed."""
        rows = self._db.execute("SELECT * FROM trials WHERE seq IS NOT NULL ORDER BY seq").fetchall()
        return [_record(r) for r in rows]

    def abandon_running(self) -> int:
        """Mark evaluations left 'running' by an interrupted run; returns how many."""
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


LEDGER_FILES = {"sqlite": "ledger.db", "journal": "ledger.jsonl"}


def find_ledger(run_dir: Path) -> Path | None:
    """The ledger file of a run directory, whichever kind it is."""
    for name in LEDGER_FILES.values():
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def open_ledger(run_dir: Path, kind: str | None = None, *, readonly: bool = False):
    """The run's ledger: the one that exists, or a new one of ``kind`` (sqlite by default).

    ``readonly``: for readers (front, export, track) while a search may be writing.
    """
    path = find_ledger(run_dir) or Path(run_dir) / LEDGER_FILES[kind or "sqlite"]
    if path.suffix == ".jsonl":
        from evomerge.search.journal import JournalLedger

        return JournalLedger(path, readonly=readonly)
    return Ledger(path)


def _record(row) -> TrialRecord:
    return TrialRecord(
        number=row[0],
        candidate=row[1],
        rung=row[2],
        recipe_hash=row[3],
        genome=json.loads(row[4]),
        recipe=row[5],
        state=row[6],
        fidelity=row[7],
        scores=json.loads(row[8]) if row[8] else None,
        error=row[9],
        started=row[10],
        finished=row[11],
        seconds=row[12],
        seq=row[13],
    )
