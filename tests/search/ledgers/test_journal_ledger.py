"""The journal ledger's own cases: torn and damaged lines, read-only readers, old journals.

The contract every ledger kind meets is checked by evomerge.testing.ledgers
(tests/testing/test_suite_ledgers.py).
"""

from __future__ import annotations

import json

import pytest

from evomerge.errors import EvomergeError
from evomerge.search.ledgers import find_ledger, open_ledger


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


def test_a_journal_from_before_the_rename_reads_number_and_candidate_as_id_and_trial(tmp_path):
    lines = [
        {"op": "session", "start": 0, "budget": 3},
        {"op": "start", "number": 1, "candidate": 0, "rung": 0, "recipe_hash": "ha", "genome": [0.1],
         "recipe": "recipe-a", "fidelity": 64, "started": 10.0},
        {"op": "start", "number": 2, "candidate": 1, "rung": 0, "recipe_hash": "hb", "genome": [0.2],
         "recipe": "recipe-b", "fidelity": 64, "started": 10.5},
        {"op": "start", "number": 3, "candidate": 2, "rung": 0, "recipe_hash": "hc", "genome": [0.3],
         "recipe": "recipe-c", "fidelity": None, "started": 11.0},
        {"op": "finish", "number": 2, "scores": {"t/x": 0.5}, "error": None, "finished": 12.0, "seconds": 1.5,
         "seq": 0},
        {"op": "finish", "number": 1, "scores": None, "error": "boom", "finished": 12.5, "seconds": 2.5, "seq": 1},
        {"op": "close_asks", "asks": 3},
        {"op": "abandon", "numbers": [3]},
    ]
    (tmp_path / "ledger.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert find_ledger(tmp_path) == "journal"
    led = open_ledger(tmp_path)
    assert [(r.id, r.trial, r.state) for r in led.evaluations()] == [
        (1, 0, "failed"), (2, 1, "complete"), (3, 2, "abandoned")]
    assert [(r.id, r.seq) for r in led.completions()] == [(2, 0), (1, 1)]
    b = led.get(2)
    assert (b.recipe_hash, b.genome, b.recipe, b.fidelity, b.scores, b.seconds) == (
        "hb", [0.2], "recipe-b", 64, {"t/x": 0.5}, 1.5)
    assert led.get(1).error == "boom" and led.get(3).fidelity is None
    assert [(s.start, s.budget, s.closed_asks) for s in led.sessions()] == [(0, 3, 3)]
    # New lines use the new names, and the mixed journal reads back whole.
    new = led.start(3, 0, "hd", [0.4], "recipe-d", 64)
    assert new == 4
    led.finish(new, {"t/x": 1.0})
    led.close()
    last = json.loads((tmp_path / "ledger.jsonl").read_text().splitlines()[-2])
    assert last["op"] == "start" and (last["id"], last["trial"]) == (4, 3) and "number" not in last
    led = open_ledger(tmp_path, readonly=True)
    assert [(r.id, r.trial, r.seq) for r in led.completions()] == [(2, 1, 0), (1, 0, 1), (4, 3, 2)]
    led.close()
