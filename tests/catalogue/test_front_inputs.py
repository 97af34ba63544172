"""Bad inputs to the readers of a run, `evomerge front` (and `export`, which reads the same
ledger): refused with exit 2 and one paragraph naming the file and the fix, no traceback, the
run directory left as it was.

Catalogue entries covered (issue 15, deliverable 3, search side):
15. a corrupt ledger (garbage bytes in ledger.db) and a foreign ledger (another program's SQLite
    file; a journal from a run with other objectives), for front and export;
17. a directory that is not a run (missing, empty, other files, a run config without a ledger).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import NOT_A_RUN, assert_refused, copy_run, invoke, not_a_run, snapshot
from run_helpers import write_run


def _garbage(run: Path) -> Path:
    (run / "ledger.db").write_bytes(b"\x00garbage, not a database" * 100)
    return run / "ledger.db"


def _foreign_sqlite(run: Path) -> Path:
    db = sqlite3.connect(run / "ledger.db")
    db.execute("CREATE TABLE photos (id INTEGER, path TEXT)")
    db.commit()
    db.close()
    return run / "ledger.db"


def _drop_ledger(run: Path) -> None:
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (run / name).unlink(missing_ok=True)


def _reader(command: str, run: Path, tmp_path: Path):
    args = [command, run]
    if command == "export":
        args += ["--out", tmp_path / "exported"]
    before = snapshot(run)
    result = invoke(*args)
    assert snapshot(run) == before, f"a refused {command} changed the run directory"
    assert not (tmp_path / "exported").exists()
    return result


@pytest.mark.parametrize("command", ["front", "export"])
def test_garbage_ledger_is_refused(finished_run, tmp_path, command):
    run = copy_run(finished_run, tmp_path)
    _drop_ledger(run)
    ledger = _garbage(run)
    assert_refused(_reader(command, run, tmp_path), ledger, "not a readable SQLite database")


@pytest.mark.parametrize("command", ["front", "export"])
def test_foreign_sqlite_file_is_refused(finished_run, tmp_path, command):
    run = copy_run(finished_run, tmp_path)
    _drop_ledger(run)
    ledger = _foreign_sqlite(run)
    assert_refused(_reader(command, run, tmp_path), ledger, "not an evomerge ledger", "photos")


@pytest.mark.parametrize("command", ["front", "export"])
def test_another_runs_journal_is_refused(zoo, finished_run, tmp_path, command):
    other = tmp_path / "other"
    other.mkdir()
    config = write_run(other, zoo, budget={"trials": 1}, ledger="journal",
                       objectives=[{"task": "cost", "metric": "params"}])
    assert invoke("search", config, "--out", other / "out").exit_code == 0
    run = copy_run(finished_run, tmp_path)
    _drop_ledger(run)
    (run / "ledger.jsonl").write_bytes((other / "out" / "ledger.jsonl").read_bytes())
    assert_refused(_reader(command, run, tmp_path), run / "ledger.jsonl", "another run")


@pytest.mark.parametrize("make", NOT_A_RUN)
def test_a_directory_that_is_not_a_run_is_refused(finished_run, tmp_path, make):
    d = not_a_run(tmp_path, finished_run, make)
    before = snapshot(d)
    assert_refused(invoke("front", d), d, "not a search run", "evomerge search --out")
    assert snapshot(d) == before and d.exists() == (make != "missing")
