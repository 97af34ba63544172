"""Both ledger kinds keep every finished evaluation, in completion order, across reopening."""

from __future__ import annotations

import pytest

from evomerge.errors import EvomergeError
from evomerge.search.ledgers import find_ledger, open_ledger
from evomerge.search.ledgers.sqlite import SQLiteLedger as Ledger


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_rows_survive_reopening_in_completion_order(tmp_path, kind):
    led = open_ledger(tmp_path, kind)
    a = led.start(0, 0, "ha", [0.1], "recipe-a", 4)
    b = led.start(1, 0, "hb", [0.2], "recipe-b", 4)
    c = led.start(2, 0, "hc", [0.3], "recipe-c", None)
    led.finish(b, {"x": 1.0}, seconds=0.5)
    led.finish(a, None, "merge failed: boom")
    led.close()
    led = open_ledger(tmp_path)  # reopened: the kind is found from the file
    assert find_ledger(tmp_path) == kind
    assert [r.id for r in led.completions()] == [b, a]
    assert [r.seq for r in led.completions()] == [0, 1]
    rb = led.completions()[0]
    assert (rb.state, rb.scores, rb.seconds, rb.recipe, rb.genome) == ("complete", {"x": 1.0}, 0.5, "recipe-b", [0.2])
    assert led.completions()[1].state == "failed" and "boom" in led.completions()[1].error
    assert led.abandon_running() == 1 and led.evaluations("abandoned")[0].id == c
    assert led.start(3, 0, "hd", [0.4], "recipe-d", 4) == c + 1
    led.close()


def test_a_journal_line_torn_by_a_crash_is_dropped(tmp_path):
    led = open_ledger(tmp_path, "journal")
    n = led.start(0, 0, "ha", [0.1], "r", 4)
    led.finish(n, {"x": 1.0})
    led.close()
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(path.read_bytes() + b'{"op":"start","number":2,"cand')  # killed mid-write
    led = open_ledger(tmp_path)
    assert [r.id for r in led.evaluations()] == [n]
    led.start(1, 0, "hb", [0.2], "r", 4)  # appends after the good lines
    led.close()
    assert [r.recipe_hash for r in open_ledger(tmp_path).evaluations()] == ["ha", "hb"]


def test_an_old_sqlite_ledger_is_refused_with_a_reason(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("CREATE TABLE trials (number INTEGER PRIMARY KEY, recipe_hash TEXT)")
    db.close()
    with pytest.raises(EvomergeError, match="older evomerge"):
        Ledger(tmp_path / "ledger.db")


def test_a_journal_reader_never_changes_the_file_and_damage_inside_is_reported(tmp_path):
    led = open_ledger(tmp_path, "journal")
    led.finish(led.start(0, 0, "ha", [0.1], "r", 4), {"x": 1.0})
    led.close()
    path = tmp_path / "ledger.jsonl"
    partial = path.read_bytes() + b'{"op":"start","num'  # a line the search is writing right now
    path.write_bytes(partial)
    reader = open_ledger(tmp_path, readonly=True)
    assert [r.recipe_hash for r in reader.completions()] == ["ha"]
    reader.close()
    assert path.read_bytes() == partial
    path.write_bytes(b'{"op":"nonsense"}\n' + partial)
    with pytest.raises(EvomergeError, match="line 1 of the journal is damaged"):
        open_ledger(tmp_path, readonly=True)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_sessions_record_budgets_and_where_asking_stopped(tmp_path, kind):
    led = open_ledger(tmp_path, kind)
    led.begin_session(5)
    led.finish(led.start(0, 0, "ha", [0.1], "r", 4), {"x": 1.0})
    led.close_asks(7)
    led.begin_session(12)
    led.close()
    sessions = open_ledger(tmp_path).sessions()
    assert [(s.start, s.budget, s.closed_asks) for s in sessions] == [(0, 5, 7), (1, 12, None)]
