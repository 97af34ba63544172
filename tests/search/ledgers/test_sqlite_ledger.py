"""The SQLite ledger's own cases: ledgers from older evomerge versions (migrated or refused).

The contract every ledger kind meets is checked by evomerge.testing.ledgers
(tests/testing/test_suite_ledgers.py).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from evomerge.errors import EvomergeError
from evomerge.search.ledgers import find_ledger, open_ledger
from evomerge.search.ledgers.sqlite import SQLiteLedger

# The schema before evaluations and trials were told apart by name (evomerge before the rename).
PRE_RENAME_SCHEMA = """
CREATE TABLE trials (
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
CREATE INDEX trials_by_hash ON trials (recipe_hash);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    start INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    closed_asks INTEGER
);
"""


def _old_ledger(path):
    db = sqlite3.connect(path)
    db.executescript(PRE_RENAME_SCHEMA)
    rows = [  # number, candidate, rung, hash, genome, recipe, state, fidelity, scores, error, started, finished, seconds, seq
        (1, 0, 0, "ha", [0.1, 0.2], "recipe-a", "complete", 64, {"t/x": 0.5}, None, 10.0, 11.0, 1.0, 1),
        (2, 1, 0, "hb", [0.3, 0.4], "recipe-b", "failed", 64, None, "merge failed: boom", 10.5, 11.5, 1.0, 0),
        (3, 0, 1, "ha", [0.1, 0.2], "recipe-a", "complete", None, {"t/x": 0.75}, None, 12.0, 14.0, 2.0, 2),
        (4, 2, 0, "hc", [0.5, 0.6], "recipe-c", "running", 64, None, None, 13.0, None, None, None),
    ]
    db.executemany(
        "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*r[:4], json.dumps(r[4]), r[5], r[6], r[7], json.dumps(r[8]) if r[8] else None, *r[9:]) for r in rows],
    )
    db.executemany("INSERT INTO sessions (start, budget, closed_asks) VALUES (?, ?, ?)", [(0, 3, 4), (2, 6, None)])
    db.commit()
    db.close()


def test_a_ledger_from_before_the_rename_is_migrated_in_place(tmp_path):
    _old_ledger(tmp_path / "ledger.db")
    assert find_ledger(tmp_path) == "sqlite"
    led = open_ledger(tmp_path)
    assert [(r.id, r.trial, r.rung) for r in led.evaluations()] == [(1, 0, 0), (2, 1, 0), (3, 0, 1), (4, 2, 0)]
    assert [(r.id, r.seq) for r in led.completions()] == [(2, 0), (1, 1), (3, 2)]
    first = led.get(1)
    assert (first.recipe_hash, first.genome, first.recipe, first.state, first.fidelity, first.scores) == (
        "ha", [0.1, 0.2], "recipe-a", "complete", 64, {"t/x": 0.5})
    assert (first.started, first.finished, first.seconds) == (10.0, 11.0, 1.0)
    assert led.get(2).error == "merge failed: boom" and led.get(2).scores is None
    assert led.get(3).fidelity is None
    assert [(s.start, s.budget, s.closed_asks) for s in led.sessions()] == [(0, 3, 4), (2, 6, None)]
    # The migrated ledger is written like a new one.
    assert led.abandon_running() == 1
    new = led.start(3, 0, "hd", [0.7, 0.8], "recipe-d", 64)
    assert new == 5
    led.finish(new, {"t/x": 1.0})
    led.close()
    db = sqlite3.connect(tmp_path / "ledger.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    columns = [r[1] for r in db.execute("PRAGMA table_info(evaluations)")]
    db.close()
    assert "trials" not in tables and {"evaluations", "sessions"} <= tables
    assert columns[:2] == ["id", "trial"]
    led = open_ledger(tmp_path, readonly=True)  # opened again: nothing left to migrate
    assert [(r.id, r.seq) for r in led.completions()][-1] == (5, 3)
    assert led.get(4).state == "abandoned"
    led.close()


def test_an_old_sqlite_ledger_is_refused_with_a_reason(tmp_path):
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("CREATE TABLE trials (number INTEGER PRIMARY KEY, recipe_hash TEXT)")
    db.close()
    with pytest.raises(EvomergeError, match="older evomerge"):
        SQLiteLedger(tmp_path / "ledger.db")


def test_the_sqlite_ledger_takes_no_options(tmp_path):
    from evomerge.config.run import LedgerSpec

    with pytest.raises(EvomergeError, match="takes no options"):
        open_ledger(tmp_path, LedgerSpec(kind="sqlite", path="elsewhere.db"))
