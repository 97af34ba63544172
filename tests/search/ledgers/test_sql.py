"""The SQL ledger on a real PostgreSQL server (127.0.0.1, password auth): lease, password handling,
and a run resumed from a machine that has only the database."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import yaml
from pg_server import PASSWORD, PostgresServer
from run_helpers import completions, search_killed_at_gate, write_gate, write_run

from evomerge.config.run import LedgerSpec
from evomerge.errors import EvomergeError
from evomerge.run import resume_search, run_search
from evomerge.search.ledgers import open_ledger
from evomerge.testing import mini_zoo_config
from evomerge.testing.ledgers import LedgerSuite
from evomerge.zoo.build import build_zoo

ENV = "EVOMERGE_TEST_DB_PASSWORD"


@pytest.fixture(scope="module")
def pg():
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(ENV, PASSWORD)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _spec(pg, run, **over):
    return LedgerSpec.model_validate({"kind": "sql", "url": pg.url(), "password_env": ENV, "run": run, **over})


def test_rows_and_sessions_round_trip_through_the_pointer(pg, password, tmp_path):
    led = open_ledger(tmp_path, _spec(pg, "roundtrip"))
    led.begin_session(4)
    a = led.start(0, 0, "ha", [0.1], "recipe-a", 4)
    b = led.start(1, 0, "hb", [0.2], "recipe-b", None)
    led.finish(b, {"x": 1.0}, seconds=0.5)
    led.finish(a, None, "merge failed: boom")
    led.close_asks(9)
    led.close()
    assert PASSWORD not in (tmp_path / "ledger.sql.yaml").read_text()
    led = open_ledger(tmp_path, readonly=True)  # found through the run directory's pointer
    assert [(r.id, r.trial, r.state, r.seq) for r in led.completions()] == [(b, 1, "complete", 0), (a, 0, "failed", 1)]
    assert led.get(b).scores == {"x": 1.0} and led.get(b).fidelity is None
    assert [(s.start, s.budget, s.closed_asks) for s in led.sessions()] == [(0, 4, 9)]
    led.close()


def test_a_url_with_a_password_is_refused_before_any_output(pg, tmp_path, zoo):
    cfg = _config(tmp_path, zoo, pg, "pw", 2)
    data = yaml.safe_load(cfg.read_text())
    data["ledger"]["url"] = pg.url().replace("postgres@", "postgres:pw@")
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(EvomergeError, match=r"ledger \(sql\): url: .*holds a password.*password_env"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_a_missing_password_variable_is_named(pg, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(EvomergeError, match=f"password_env names {ENV}, which is not set"):
        open_ledger(tmp_path, _spec(pg, "nopw"))


def test_one_controller_at_a_time(pg, password, tmp_path):
    first = open_ledger(tmp_path, _spec(pg, "leased", lease_seconds=60))
    try:
        with pytest.raises(EvomergeError, match="held by another controller.*--take-over"):
            open_ledger(tmp_path)
        reader = open_ledger(tmp_path, readonly=True)  # readers need no lease
        reader.close()
    finally:
        first.close()
    open_ledger(tmp_path).close()  # released on close


def test_a_dead_controller_on_this_host_is_taken_over_at_once(pg, password, tmp_path):
    import sqlalchemy as sa

    led = open_ledger(tmp_path, _spec(pg, "dead", lease_seconds=3600))
    dead = subprocess.Popen(["true"])
    dead.wait()
    with led.engine.begin() as c:  # as if a controller with that PID had held it a moment ago
        c.execute(led._leases.update().where(led._leases.c.run == "dead").values(pid=dead.pid, holder="gone"))
    led._stop.set()
    led._beat.join()
    led.engine.dispose()
    led = open_ledger(tmp_path)  # not refused: that PID is dead
    led.close()
    del sa


def test_another_host_must_expire_or_be_taken_over(pg, password, tmp_path):
    led = open_ledger(tmp_path, _spec(pg, "remote", lease_seconds=1.5))
    with led.engine.begin() as c:
        c.execute(led._leases.update().where(led._leases.c.run == "remote").values(host="elsewhere", holder="x"))
    led._stop.set()
    led._beat.join()
    with pytest.raises(EvomergeError, match="held by another controller"):
        open_ledger(tmp_path)
    taken = open_ledger(tmp_path, take_over=True)
    taken.close()
    with led.engine.begin() as c:  # the other host again, then silent
        c.execute(led._leases.insert().values(run="remote", holder="x", host="elsewhere", pid=1,
                                              heartbeat=__import__("sqlalchemy").func.now()))
    led.engine.dispose()
    time.sleep(1.6)
    open_ledger(tmp_path).close()  # expired


def test_a_controller_whose_lease_was_taken_stops_writing(pg, password, tmp_path):
    first = open_ledger(tmp_path, _spec(pg, "stolen", lease_seconds=0.6))
    second = open_ledger(tmp_path, take_over=True)
    time.sleep(0.5)  # the first one's next heartbeat finds the lease gone
    with pytest.raises(EvomergeError, match="another controller took over"):
        first.start(0, 0, "h", [0.5], "r", None)
    second.start(0, 0, "h", [0.5], "r", None)
    first.close()
    second.close()


def _config(tmp_path, zoo, pg, run, trials):
    return write_run(tmp_path, zoo, run, optimizer={"name": "tpe"}, budget={"trials": trials}, seed=2,
                     ledger={"kind": "sql", "url": pg.url(), "password_env": ENV, "run": run})


def _hashes(run_dir):
    return [e.recipe_hash for e in completions(run_dir)]


def test_resume_from_a_machine_that_has_only_the_database(pg, password, tmp_path, zoo):
    whole = run_search(_config(tmp_path, zoo, pg, "whole", 5), tmp_path / "whole", log=lambda s: None)
    assert whole.ledger == "sql"
    run_search(_config(tmp_path, zoo, pg, "moved", 5), tmp_path / "here", trials=3, log=lambda s: None)
    frozen = (tmp_path / "here" / "run.yaml").read_text()
    assert PASSWORD not in frozen and ENV in frozen
    elsewhere = tmp_path / "other-machine" / "run"  # no copy of the run directory
    result = resume_search(elsewhere, ledger={"url": pg.url(), "run": "moved", "password_env": ENV},
                           log=lambda s: None)
    assert result.evaluated == 2
    assert (elsewhere / "run.yaml").read_text() == frozen
    assert _hashes(elsewhere) == _hashes(tmp_path / "whole")  # the same trajectory, nothing twice
    with pytest.raises(EvomergeError, match="already holds a run named 'moved'"):
        run_search(_config(tmp_path, zoo, pg, "moved", 5), tmp_path / "again", log=lambda s: None)
    assert not (tmp_path / "again").exists()


def test_kill_9_then_resume_on_postgres_loses_and_repeats_nothing(pg, password, tmp_path, zoo):
    # The gate lets 3 evaluations through and holds the 4th: the kill lands with exactly 3
    # finished and one in flight, whatever the machine's speed.
    trials = 8
    gate = write_gate(tmp_path / "gate", passes=3)
    cfg = write_run(tmp_path, zoo, "killed", optimizer={"name": "tpe"}, budget={"trials": trials}, seed=2,
                    objectives=[{"task": "zoo_text"}, gate.objective],
                    ledger={"kind": "sql", "url": pg.url(), "password_env": ENV, "run": "killed"})
    run_dir = tmp_path / "killed"
    search_killed_at_gate(cfg, run_dir, gate, 3, env=dict(os.environ))
    done = _hashes(run_dir)
    assert len(done) == 3
    result = resume_search(run_dir, log=lambda s: None)  # the dead PID's lease is taken at once
    after = _hashes(run_dir)
    assert after[: len(done)] == done and len(after) == len(set(after)) == trials
    assert result.evaluated == trials - len(done)


@pytest.mark.parametrize("ledger_kind", ["sql"])
class TestPostgresPassesTheLedgerSuite(LedgerSuite):
    """The ledger contract on PostgreSQL itself (tests/testing runs it on a SQLite URL)."""

    @pytest.fixture
    def ledger_spec(self, ledger_kind, pg, password, tmp_path):
        return _spec(pg, f"suite-{tmp_path.name}")
