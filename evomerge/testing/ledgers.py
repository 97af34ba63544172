"""Conformance suite for ledger kinds: the ``Ledger`` contract of ``evomerge.search.ledgers``.

Checks, for each kind: ``exists`` and ``open`` as class methods, and the run
directory's kind found again from its files; evaluation ids unique and
increasing, also across reopening; every field of an evaluation read back as
written (``get``, ``evaluations``, ``completions``); finished evaluations
(complete or failed) survive reopening in completion order with ``seq`` 0, 1, 2,
...; failed ones keep their error and no scores; ``abandon_running`` marks what an
interrupted run left running; sessions record budgets and where asking stopped;
finished rows are durable before ``close`` and a read-only reader opened while
the writer is still open sees them.

It runs on every name in ``LEDGERS`` by default. To run it on yours::

    # test_my_ledger.py
    import pytest
    from evomerge.testing.ledgers import LedgerSuite

    @pytest.mark.parametrize("ledger_kind", ["my_ledger"])
    class TestMyLedger(LedgerSuite):
        pass

Override the ``ledger_spec`` fixture to open it with options
(``ledger: {kind: ..., ...}`` in a run config).
"""

from __future__ import annotations

import math

import pytest

from evomerge.search.ledgers import LEDGERS, EvaluationRecord, Session, find_ledger, open_ledger
from evomerge.testing.closing import closing_all


class LedgerSuite:
    """The ledger contract; ``ledger_kind`` is the registered name under test."""

    @pytest.fixture(params=LEDGERS.names())
    def ledger_kind(self, request) -> str:
        return request.param

    @pytest.fixture
    def ledger_spec(self, ledger_kind):
        """What a new ledger is opened as: a kind's name or an ``evomerge.config.run.LedgerSpec``."""
        return ledger_kind

    @pytest.fixture
    def run_dir(self, tmp_path):
        return tmp_path / "run"

    @pytest.fixture
    def new(self, run_dir, ledger_spec):
        """A new ledger in ``run_dir``; closed at the end of the test."""
        with closing_all(lambda: open_ledger(run_dir, ledger_spec)) as new:
            yield new

    @pytest.fixture
    def reopen(self, run_dir):
        """The ledger in ``run_dir`` opened again (its kind found from its files)."""
        with closing_all(lambda readonly=False: open_ledger(run_dir, readonly=readonly)) as reopen:
            yield reopen

    # -- the contract ------------------------------------------------------------------

    def test_the_kind_is_found_from_its_files(self, ledger_kind, run_dir, new):
        cls = LEDGERS.get(ledger_kind)
        assert callable(getattr(cls, "exists", None)) and callable(getattr(cls, "open", None))
        run_dir.mkdir(parents=True)
        assert not cls.exists(run_dir) and find_ledger(run_dir) is None
        led = new()
        led.finish(led.start(0, 0, "h", [0.5], "r", None), {"x": 1.0})
        led.close()
        assert cls.exists(run_dir)
        assert find_ledger(run_dir) == ledger_kind

    def test_ids_are_unique_and_increasing_across_reopening(self, new, reopen):
        led = new()
        ids = [led.start(i, 0, f"h{i}", [0.1 * i], "r", 4) for i in range(4)]
        assert all(isinstance(i, int) for i in ids)
        assert ids == sorted(set(ids)), f"ids {ids} are not unique and increasing"
        led.finish(ids[1], {"x": 1.0})
        led.close()
        led = reopen()
        assert led.abandon_running() == 3
        more = [led.start(10 + i, 0, f"g{i}", [0.5], "r", 4) for i in range(2)]
        assert more == sorted(set(more)) and min(more) > max(ids), f"ids {more} after {ids}"
        assert [r.id for r in led.evaluations()] == ids + more

    def test_every_field_reads_back_as_written(self, new, reopen):
        led = new()
        genome = [0.0, 0.1 + 0.2, 1.0, 1 / 3]
        recipe = "merge_method: linear\nmodels:\n- model: a\n"
        a = led.start(7, 2, "abc123", genome, recipe, 128)
        b = led.start(8, 0, "def456", [0.5], "r", None)
        ra = led.get(a)
        assert isinstance(ra, EvaluationRecord)
        assert (ra.id, ra.trial, ra.rung, ra.recipe_hash, ra.genome, ra.recipe, ra.fidelity) == (
            a, 7, 2, "abc123", genome, recipe, 128)
        assert (ra.state, ra.scores, ra.error, ra.finished, ra.seconds, ra.seq) == ("running", None, None, None, None, None)
        assert isinstance(ra.started, float) and math.isfinite(ra.started)
        scores = {"task/exact_match": 0.1 + 0.2, "cost/params": 123456789.0, "neg": -1e-300}
        led.finish(a, scores, seconds=1.25)
        led.close()
        led = reopen()
        ra, rb = led.get(a), led.get(b)
        assert (ra.trial, ra.rung, ra.recipe_hash, ra.genome, ra.recipe, ra.fidelity) == (
            7, 2, "abc123", genome, recipe, 128)
        assert (ra.state, ra.scores, ra.error, ra.seconds, ra.seq) == ("complete", scores, None, 1.25, 0)
        assert ra.finished is not None and ra.finished >= ra.started
        assert (rb.fidelity, rb.state, rb.seq) == (None, "running", None)
        assert led.evaluations() == [ra, rb]

    def test_rows_survive_reopening_in_completion_order(self, ledger_kind, run_dir, new, reopen):
        led = new()
        a = led.start(0, 0, "ha", [0.1], "recipe-a", 4)
        b = led.start(1, 0, "hb", [0.2], "recipe-b", 4)
        c = led.start(2, 0, "hc", [0.3], "recipe-c", None)
        led.finish(b, {"x": 1.0}, seconds=0.5)
        led.finish(a, None, "merge failed: boom")
        led.close()
        led = reopen()  # reopened: the kind is found from the file
        assert find_ledger(run_dir) == ledger_kind
        done = led.completions()
        assert [r.id for r in done] == [b, a]
        assert [r.seq for r in done] == [0, 1]
        rb = done[0]
        assert (rb.state, rb.scores, rb.seconds, rb.recipe, rb.genome) == ("complete", {"x": 1.0}, 0.5, "recipe-b", [0.2])
        assert done[1].state == "failed" and "boom" in done[1].error
        assert led.abandon_running() == 1 and led.evaluations("abandoned")[0].id == c
        assert led.start(3, 0, "hd", [0.4], "recipe-d", 4) == c + 1

    def test_failed_and_complete_are_told_apart(self, new, reopen):
        led = new()
        ids = [led.start(i, 0, f"h{i}", [0.1], "r", None) for i in range(4)]
        led.finish(ids[2], {"x": 0.5})
        led.finish(ids[0], None, "task addition failed: non-finite logits", seconds=0.1)
        led.finish(ids[3], {"x": 0.25, "y": 2.0}, seconds=2.0)
        led.close()
        led = reopen()
        assert [r.id for r in led.evaluations("complete")] == [ids[2], ids[3]]
        assert [r.id for r in led.evaluations("failed")] == [ids[0]]
        assert [r.id for r in led.evaluations("running")] == [ids[1]]
        failed = led.get(ids[0])
        assert (failed.scores, failed.error, failed.seconds, failed.seq) == (
            None, "task addition failed: non-finite logits", 0.1, 1)
        assert [r.seq for r in led.completions()] == [0, 1, 2]
        assert [r.id for r in led.completions()] == [ids[2], ids[0], ids[3]]
        assert [r.id for r in led.evaluations()] == ids  # every evaluation, by id

    def test_abandon_running_marks_what_an_interrupted_run_left(self, new, reopen):
        led = new()
        ids = [led.start(i, 0, f"h{i}", [0.1], "r", 4) for i in range(3)]
        led.finish(ids[1], {"x": 1.0})
        led.close()  # interrupted with ids[0] and ids[2] in flight
        led = reopen()
        assert [r.id for r in led.evaluations("running")] == [ids[0], ids[2]]
        assert led.abandon_running() == 2
        assert led.abandon_running() == 0
        assert [r.id for r in led.evaluations("abandoned")] == [ids[0], ids[2]]
        assert all(r.seq is None and r.scores is None for r in led.evaluations("abandoned"))
        assert [r.id for r in led.completions()] == [ids[1]]
        d = led.start(3, 0, "h3", [0.1], "r", 4)  # the rerun of an abandoned evaluation
        led.finish(d, {"x": 2.0})
        led.close()
        led = reopen()
        assert [r.state for r in led.evaluations()] == ["abandoned", "complete", "abandoned", "complete"]
        assert [(r.id, r.seq) for r in led.completions()] == [(ids[1], 0), (d, 1)]

    def test_sessions_record_budgets_and_where_asking_stopped(self, new, reopen):
        led = new()
        assert led.sessions() == []
        led.begin_session(5)
        led.finish(led.start(0, 0, "ha", [0.1], "r", 4), {"x": 1.0})
        led.close_asks(7)
        led.begin_session(12)
        led.close()
        led = reopen()
        sessions = led.sessions()
        assert all(isinstance(s, Session) for s in sessions)
        assert [(s.start, s.budget, s.closed_asks) for s in sessions] == [(0, 5, 7), (1, 12, None)]
        led.close_asks(20)  # the current (last) session stops asking
        led.begin_session(30)
        assert [(s.start, s.budget, s.closed_asks) for s in led.sessions()] == [
            (0, 5, 7), (1, 12, 20), (1, 30, None)]

    def test_finished_rows_are_durable_and_readers_see_them(self, new, reopen):
        led = new()
        a = led.start(0, 0, "ha", [0.1], "r", 4)
        b = led.start(1, 0, "hb", [0.2], "r", 4)
        led.finish(a, {"x": 1.0})
        # The writer stays open (a search in progress, or one killed before close).
        reader = reopen(readonly=True)
        assert [(r.id, r.scores) for r in reader.completions()] == [(a, {"x": 1.0})]
        assert [r.id for r in reader.evaluations("running")] == [b]
        reader.close()
        led.finish(b, None, "boom")
        reader = reopen(readonly=True)
        assert [(r.id, r.state) for r in reader.completions()] == [(a, "complete"), (b, "failed")]
        assert reader.get(b).error == "boom"
        reader.close()
        led.close()
