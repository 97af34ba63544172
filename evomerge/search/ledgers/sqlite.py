"""The default ledger: every evaluation of a run, durable, in one SQLite file (``ledger.db``).

Write-ahead logging with full sync: ``finish`` is one transaction (the row and
its place in the completion order). Ledgers written before evaluations and
trials had their own names (a ``trials`` table with ``number`` and ``candidate``
columns) are renamed in place, in one transaction, when opened.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from evomerge.errors import EvomergeError
from evomerge.search.ledgers import EvaluationRecord, Session

FILENAME = "ledger.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    trial INTEGER NOT NULL,
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
CREATE INDEX IF NOT EXISTS evaluations_by_hash ON evaluations (recipe_hash);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    start INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    closed_asks INTEGER
);
"""

# The schema before evaluations and trials were told apart by name.
_MIGRATE_V1 = """
BEGIN IMMEDIATE;
ALTER TABLE trials RENAME TO evaluations;
ALTER TABLE evaluations RENAME COLUMN number TO id;
ALTER TABLE evaluations RENAME COLUMN candidate TO trial;
DROP INDEX IF EXISTS trials_by_hash;
COMMIT;
"""


class SQLiteLedger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        # What the file is, read before anything is written to it (WAL mode rewrites the header).
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise EvomergeError(
                f"{self.path} is not a readable SQLite database ({e}), so the run's ledger is "
                "damaged or was replaced; nothing was changed. Put back a copy of the run's "
                "ledger.db, or start a new run with `evomerge search` and another --out."
            ) from None
        if tables and not tables & {"evaluations", "trials"}:
            self._db.close()
            raise EvomergeError(
                f"{self.path} is a SQLite database but not an evomerge ledger (its tables: "
                f"{', '.join(sorted(tables))}); nothing was changed. Put back the run's own "
                "ledger.db, or start a new run with `evomerge search` and another --out."
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if "trials" in tables and "evaluations" not in tables:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(trials)")}
            if "seq" not in columns:
                self._db.close()
                raise EvomergeError(
                    f"{self.path} was written by an older evomerge (no completion order); "
                    "start a new run with `evomerge search`."
                )
            self._db.executescript(_MIGRATE_V1)
        self._db.executescript(SCHEMA)

    # -- the ledger kind ---------------------------------------------------------------

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (Path(run_dir) / FILENAME).is_file()

    @classmethod
    def open(cls, run_dir: Path, options: dict, *, readonly: bool = False, take_over: bool = False) -> SQLiteLedger:
        if options:
            raise EvomergeError(f"ledger: the sqlite ledger takes no options (got {sorted(options)}).")
        return cls(Path(run_dir) / FILENAME)

    def close(self) -> None:
        self._db.close()

    # -- writing -----------------------------------------------------------------------

    def start(
        self, trial: int, rung: int, recipe_hash: str, genome: list[float], recipe: str, fidelity: int | None
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO evaluations (trial, rung, recipe_hash, genome, recipe, state, fidelity, started) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            (trial, rung, recipe_hash, json.dumps(genome), recipe, fidelity, time.time()),
        )
        return int(cur.lastrowid)

    def finish(
        self, id: int, scores: dict[str, float] | None, error: str | None = None, seconds: float | None = None
    ) -> None:
        state = "complete" if error is None else "failed"
        with self._db:  # one transaction: the row and its place in the completion order
            self._db.execute("BEGIN IMMEDIATE")
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM evaluations").fetchone()
            self._db.execute(
                "UPDATE evaluations SET state = ?, scores = ?, error = ?, finished = ?, seconds = ?, seq = ? "
                "WHERE id = ?",
                (state, json.dumps(scores) if scores is not None else None, error, time.time(), seconds, seq, id),
            )

    def begin_session(self, budget: int) -> None:
        (start,) = self._db.execute("SELECT COUNT(*) FROM evaluations WHERE seq IS NOT NULL").fetchone()
        self._db.execute("INSERT INTO sessions (start, budget) VALUES (?, ?)", (start, budget))

    def close_asks(self, asks: int) -> None:
        self._db.execute(
            "UPDATE sessions SET closed_asks = ? WHERE id = (SELECT MAX(id) FROM sessions)", (asks,)
        )

    def abandon_running(self) -> int:
        cur = self._db.execute("UPDATE evaluations SET state = 'abandoned' WHERE state = 'running'")
        return cur.rowcount

    # -- reading -----------------------------------------------------------------------

    def sessions(self) -> list[Session]:
        rows = self._db.execute("SELECT start, budget, closed_asks FROM sessions ORDER BY id").fetchall()
        return [Session(*r) for r in rows]

    def get(self, id: int) -> EvaluationRecord:
        return _record(self._db.execute("SELECT * FROM evaluations WHERE id = ?", (id,)).fetchone())

    def completions(self) -> list[EvaluationRecord]:
        rows = self._db.execute("SELECT * FROM evaluations WHERE seq IS NOT NULL ORDER BY seq").fetchall()
        return [_record(r) for r in rows]

    def evaluations(self, state: str | None = None) -> list[EvaluationRecord]:
        if state is None:
            rows = self._db.execute("SELECT * FROM evaluations ORDER BY id").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM evaluations WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_record(r) for r in rows]


def _record(row) -> EvaluationRecord:
    return EvaluationRecord(
        id=row[0],
        trial=row[1],
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
