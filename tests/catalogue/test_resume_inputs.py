"""Bad inputs to `evomerge resume`: refused with exit 2 and one paragraph naming the file and
the fix, no traceback, and the run directory left as it was (bytes and mtimes).

Catalogue entries covered (issue 15, deliverable 3, search side):
7. zero or negative --trials on resume;
14. source models changed since the run started: refused naming the model and file unless
    --allow-changed-sources; a larger budget (a config edit replay handles) goes on; a run without
    fingerprints resumes with a warning and has them recorded;
15. a corrupt ledger (garbage bytes in ledger.db) and a foreign ledger (another program's SQLite
    file; another run's ledger);
16. a second controller on the same run;
17. a directory that is not a run.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import NOT_A_RUN, assert_refused, copy_run, invoke, not_a_run, snapshot
from run_helpers import evaluations, write_run

from evomerge.search import fingerprints
from evomerge.search.rundir import RunLock


def _untouched_after(run: Path, *args):
    before = snapshot(run)
    result = invoke("resume", run, *args)
    assert snapshot(run) == before, "a refused resume changed the run directory"
    return result


@pytest.mark.parametrize("trials", ["0", "-5"])
def test_zero_or_negative_trials_are_refused(finished_run, tmp_path, trials):
    run = copy_run(finished_run, tmp_path)
    assert_refused(_untouched_after(run, "--trials", trials), f"--trials {trials}", "at least 1")


def _change_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(model / "model.safetensors"))
    state["model.norm.weight"] = state["model.norm.weight"] * 1.01  # same size, other bytes
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture()
def own_run(zoo, tmp_path) -> Path:
    """A finished run over a private copy of the zoo (its sources may be changed)."""
    import shutil

    models = Path(shutil.copytree(zoo, tmp_path / "zoo"))
    config = write_run(tmp_path, models, budget={"trials": 2})
    assert invoke("search", config, "--out", tmp_path / "out").exit_code == 0
    return tmp_path / "out"


def test_changed_source_is_refused_unless_allowed(own_run, tmp_path):
    assert (own_run / fingerprints.FILENAME).is_file()
    _change_weights(tmp_path / "zoo" / "rev")
    result = _untouched_after(own_run, "--trials", "3")
    assert_refused(result, str(tmp_path / "zoo" / "rev" / "model.safetensors"), "changed since the run started",
                   "--allow-changed-sources")
    assert len(evaluations(own_run)) == 2

    result = invoke("resume", own_run, "--trials", "3", "--allow-changed-sources")
    assert result.exit_code == 0, result.output
    assert "changed sources" in result.output and len(evaluations(own_run)) == 3
    # the new fingerprints are recorded: the next resume goes on without the flag
    assert invoke("resume", own_run, "--trials", "4").exit_code == 0


def test_a_larger_budget_in_the_run_config_goes_on(own_run):
    # A config edit replay handles (README, "Ledger and resume"): the run goes on to the new budget.
    frozen = own_run / "run.yaml"
    config = yaml.safe_load(frozen.read_text())
    config["budget"]["trials"] = 3
    frozen.write_text(yaml.safe_dump(config, sort_keys=False))
    result = invoke("resume", own_run)
    assert result.exit_code == 0, result.output
    assert len(evaluations(own_run)) == 3 and "changed" not in result.output


def test_a_run_without_fingerprints_resumes_with_a_warning(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / fingerprints.FILENAME).unlink()  # a run started before they were recorded
    result = invoke("resume", run, "--trials", "3")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "no fingerprints" in result.output
    assert (run / fingerprints.FILENAME).is_file()


def test_a_same_size_edit_of_a_large_file_is_seen_in_its_header_or_samples(tmp_path, monkeypatch):
    # Large files are sampled, not hashed whole: a changed header or a sampled chunk shows.
    monkeypatch.setattr(fingerprints, "SMALL", 0)
    monkeypatch.setattr(fingerprints, "CHUNK", 16)
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(path))
    before = fingerprints.file_fingerprint(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last chunk is always sampled
    path.write_bytes(bytes(data))
    after = fingerprints.file_fingerprint(path)
    assert after["size"] == before["size"] and after["header_sha256"] == before["header_sha256"]
    assert after["sample_sha256"] != before["sample_sha256"]


def test_garbage_ledger_is_refused_and_left_as_it_is(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "ledger.db").write_bytes(b"\x00garbage, not a database" * 100)
    for extra in ("ledger.db-wal", "ledger.db-shm"):
        (run / extra).unlink(missing_ok=True)
    assert_refused(_untouched_after(run), run / "ledger.db", "not a readable SQLite database",
                   "evomerge search")


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_is(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (run / name).unlink(missing_ok=True)
    db = sqlite3.connect(run / "ledger.db")
    db.execute("CREATE TABLE photos (id INTEGER, path TEXT)")
    db.commit()
    db.close()
    result = _untouched_after(run)
    assert_refused(result, run / "ledger.db", "not an evomerge ledger", "photos")


def test_another_runs_journal_is_refused(zoo, finished_run, tmp_path):
    # A run with other objectives and models; its journal copied into our run directory.
    other = tmp_path / "other"
    other.mkdir()
    config = write_run(other, zoo, budget={"trials": 1}, ledger="journal",
                       objectives=[{"task": "cost", "metric": "params"}])
    assert invoke("search", config, "--out", other / "out").exit_code == 0
    run = copy_run(finished_run, tmp_path)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (run / name).unlink(missing_ok=True)
    (run / "ledger.jsonl").write_bytes((other / "out" / "ledger.jsonl").read_bytes())
    assert_refused(_untouched_after(run), run / "ledger.jsonl", "another run", "zoo_text")


def test_a_journal_that_is_not_one_is_refused_and_left_as_it_is(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (run / name).unlink(missing_ok=True)
    (run / "ledger.jsonl").write_bytes(b"PK\x03\x04 a zip file, no newline")
    assert_refused(_untouched_after(run), run / "ledger.jsonl", "not an evomerge ledger")


def test_a_second_controller_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    lock = RunLock(run)  # the first controller
    try:
        before = {k: v for k, v in snapshot(run).items() if k != "controller.lock"}
        result = invoke("resume", run, "--trials", "3")
        assert {k: v for k, v in snapshot(run).items() if k != "controller.lock"} == before
    finally:
        lock.release()
    assert_refused(result, run, "another controller", "evomerge resume")
    assert len(evaluations(run)) == 2


@pytest.mark.parametrize("make", NOT_A_RUN)
def test_a_directory_that_is_not_a_run_is_refused(finished_run, tmp_path, make):
    d = not_a_run(tmp_path, finished_run, make)
    before = snapshot(d)
    assert_refused(invoke("resume", d), d, "no run to resume", "evomerge search")
    assert snapshot(d) == before and (d.exists() == (make != "missing"))


def test_damaged_fingerprints_file_is_refused_with_the_fix(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / fingerprints.FILENAME).write_text("{not json")
    assert_refused(_untouched_after(run), run / fingerprints.FILENAME, "Delete it")
    json.loads((finished_run / fingerprints.FILENAME).read_text())  # the original is intact
