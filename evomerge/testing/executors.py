"""Conformance suite for executors: the ``Executor`` contract of ``evomerge.search.executors``.

On a mini zoo (``evomerge.testing.mini_zoo_config``: a base and two experts,
trained in seconds, built once per test session) and tasks ``addition`` (at
fidelity 4) and ``cost``, checks for each executor kind: it opens through
``open_executor`` with ``slots >= 1``; more jobs than slots, waited for one by
one, come back each exactly once (ids need not be contiguous) with an
``Outcome`` holding every task's values; the same recipes score as in the
serial executor; recipes that cannot merge (a model the worker does not hold,
a wrong number of inputs, a parameter the method refuses) come back as
``Outcome(values=None, error=...)`` without raising, and the executor goes on;
closing another executor of the kind, opened at the same time, leaves this one
working; ``close()`` may be called twice, busy or idle; and, for executors
whose workers run in other processes, killing the workers (SIGKILL) once a gate
task (``evomerge.testing.gate``) holds an evaluation in each makes ``wait`` raise
``WorkerLost`` or, for an executor that replaces its workers, return every job
in flight exactly once; no call blocks for ever.

Executors are opened once per kind and shared by the tests that leave them
usable. To run the suite on your own executor::

    # test_my_executor.py
    import pytest
    from evomerge.testing.executors import ExecutorSuite

    @pytest.mark.parametrize("executor_kind", ["my_executor"])
    class TestMyExecutor(ExecutorSuite):
        pass

Override ``executor_settings`` to open it with options (the ``executor:``
section of a run config, as an ``ExecutorSpec``), and ``kill_workers`` if its
workers run on other machines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import pytest

from evomerge.search.executors import (
    EXECUTORS,
    Outcome,
    TaskSpec,
    WorkerLost,
    WorkerSpec,
    open_executor,
)
from evomerge.testing.closing import closing_all
from evomerge.testing.gate import Gate

#: the executors that run on this machine without extra services (the default parameters)
LOCAL_KINDS = ["serial", "pool"]
FIDELITY = 4  # examples of the addition task per evaluation
WAIT_LIMIT = 120.0  # seconds a wait may take before the suite calls it a hang


def _tasks() -> tuple[TaskSpec, ...]:
    return (TaskSpec("addition", "search", False), TaskSpec("cost", "search", False))


def worker_spec(zoo: Path, *, torch_threads: int | None = 1) -> WorkerSpec:
    """The worker of a search over the mini zoo's base and two experts (as ``run.py`` builds it)."""
    refs = {str(zoo / m): zoo / m for m in ("base", "add", "rev")}
    return WorkerSpec(refs, str(zoo / "base"), _tasks(), torch_threads=torch_threads)


def recipe(zoo: Path, weight: float = 0.5):
    """A task-arithmetic merge of the two experts over the base."""
    from evomerge.recipe import Recipe

    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo / "base"), "models": [
        {"model": str(zoo / "add"), "parameters": {"weight": weight}},
        {"model": str(zoo / "rev"), "parameters": {"weight": 1.0 - weight}}]})


def broken_recipes(zoo: Path) -> dict[str, object]:
    """Valid recipes that cannot be merged by the worker, by reason."""
    from evomerge.recipe import Recipe

    base, add, rev = (str(zoo / m) for m in ("base", "add", "rev"))
    return {
        "a model the worker does not hold": Recipe.from_dict({"merge_method": "linear", "models": [
            {"model": add, "parameters": {"weight": 1.0}},
            {"model": str(zoo / "no-such-model"), "parameters": {"weight": 1.0}}]}),
        "a wrong number of inputs": Recipe.from_dict({"merge_method": "slerp", "base_model": base,
                                                      "models": [{"model": add}, {"model": rev}],
                                                      "parameters": {"t": 0.5}}),
        "a parameter the method refuses": Recipe.from_dict({"merge_method": "della", "base_model": base,
                                                            "models": [{"model": add}],
                                                            "parameters": {"weight": 1.0, "density": 0.5,
                                                                           "epsilon": 0.9}}),
    }


def call_with_limit(fn, limit: float = WAIT_LIMIT, what: str = "the executor"):
    """``fn()``, failing the test if it has not returned after ``limit`` seconds."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        pytest.fail(f"{what} blocked for more than {limit:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _children() -> set[int]:
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}


class _Tracked:
    """An executor, counting jobs in flight (a shared one is dropped if a test leaves any) and
    noting the child processes that appear while it opens or takes jobs (its workers, if they
    are processes of this machine)."""

    def __init__(self, opener) -> None:
        before = _children()
        self.executor = opener()
        self.children = _children() - before
        self.in_flight = 0

    @property
    def slots(self) -> int:
        return self.executor.slots

    def submit(self, job: int, recipe, fidelity) -> None:
        before = _children()
        self.executor.submit(job, recipe, fidelity)
        self.children |= _children() - before
        self.in_flight += 1

    def wait(self):
        got = call_with_limit(self.executor.wait)
        self.in_flight -= 1
        return got

    def close(self) -> None:
        self.executor.close()


class _Executors:
    """Open executors by kind, shared across the suite's tests; unique job ids."""

    def __init__(self) -> None:
        self.open: dict[str, _Tracked] = {}
        self._job = 1000

    def job(self) -> int:
        self._job += 7  # not contiguous: ids are the controller's to choose
        return self._job

    def get(self, kind: str, opener) -> _Tracked:
        if kind not in self.open:
            self.open[kind] = _Tracked(opener)
        return self.open[kind]

    def drop(self, kind: str, *, close: bool = True) -> None:
        ex = self.open.pop(kind, None)
        if ex is not None and close:
            ex.close()

    def close(self) -> None:
        for kind in list(self.open):
            self.drop(kind)


def _keep_torch_threads(fn):
    """``fn()``; an in-process worker may set torch's thread count: the test process keeps its own."""
    import torch

    threads = torch.get_num_threads()
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


class ExecutorSuite:
    """The executor contract; ``executor_kind`` is the registered name under test."""

    @pytest.fixture(params=LOCAL_KINDS)
    def executor_kind(self, request) -> str:
        return request.param

    @pytest.fixture
    def executor_settings(self, executor_kind):
        """The ``executor:`` section the executor is opened with (an ``ExecutorSpec``)."""
        from evomerge.config.run import ExecutorSpec

        return ExecutorSpec(kind=executor_kind, workers=1 if executor_kind == "serial" else 2, torch_threads=1)

    @pytest.fixture(scope="session")
    def executor_zoo(self, tmp_path_factory) -> Path:
        """The mini zoo: ``base``, ``add`` and ``rev`` model directories."""
        from evomerge.testing.models import mini_zoo_config
        from evomerge.zoo.build import build_zoo

        return build_zoo(tmp_path_factory.mktemp("executor_zoo"), mini_zoo_config(), log=lambda s: None)

    @pytest.fixture
    def executor_worker(self, executor_zoo) -> WorkerSpec:
        return worker_spec(executor_zoo)

    @pytest.fixture(scope="session")
    def executor_pool(self):
        """Executors opened once per kind for the session, closed at its end."""
        pool = _Executors()
        yield pool
        pool.close()

    @pytest.fixture
    def open_new(self, executor_settings, executor_worker):
        """``open_new(worker=None)``: a new executor of the kind under test (for ``worker``, a
        ``WorkerSpec``, or ``executor_worker``), closed after the test."""
        with closing_all(lambda worker=None: _keep_torch_threads(
                lambda: open_executor(executor_settings, worker or executor_worker))) as open_new:
            yield open_new

    @pytest.fixture
    def executor(self, executor_pool, executor_kind, executor_settings, executor_worker):
        """The shared executor of the kind under test."""
        ex = executor_pool.get(executor_kind, lambda: _keep_torch_threads(
            lambda: open_executor(executor_settings, executor_worker)))
        yield ex
        if ex.in_flight:  # the test stopped half-way: do not hand its jobs to the next one
            executor_pool.drop(executor_kind)

    @pytest.fixture
    def serial_scores(self, executor_pool, executor_zoo):
        """``serial_scores(recipe, fidelity)``: the values the serial executor gives (the reference)."""
        from evomerge.config.run import ExecutorSpec

        cache: dict = {}

        def scores(r, fidelity=FIDELITY):
            key = (r.content_hash(), fidelity)
            if key not in cache:
                serial = executor_pool.get("serial (reference)", lambda: _keep_torch_threads(lambda: open_executor(
                    ExecutorSpec(kind="serial"), worker_spec(executor_zoo, torch_threads=None))))
                job = executor_pool.job()
                serial.submit(job, r, fidelity)
                got, outcome = serial.wait()
                assert got == job and outcome.error is None, outcome.error
                cache[key] = outcome.values
            return cache[key]

        return scores

    # -- hooks -------------------------------------------------------------------------

    def kill_workers(self, executor, pids: set[int]) -> int:
        """SIGKILL the executor's worker processes; returns how many were killed. The default
        kills ``pids``: those on this machine holding an evaluation at the gate, and the child
        processes of this process (``multiprocessing``) that appeared while the executor opened
        or took jobs. Its workers are busy then (held): an override must not wait on them."""
        killed = 0
        for pid in sorted(pids):
            with contextlib.suppress(ProcessLookupError):  # a child that ended just now
                os.kill(pid, signal.SIGKILL)
                killed += 1
        return killed

    # -- the contract ------------------------------------------------------------------

    def test_is_registered_and_has_slots(self, executor_kind, executor):
        assert executor_kind in EXECUTORS
        cls = EXECUTORS.get(executor_kind)
        assert isinstance(cls, type) and hasattr(cls, "Options")
        assert isinstance(executor.executor, cls)
        assert isinstance(executor.slots, int) and executor.slots >= 1

    def test_every_job_comes_back_once_with_an_outcome(self, executor, executor_pool, executor_zoo):
        n = 2 * executor.slots + 1
        jobs = {executor_pool.job(): 0.1 + 0.8 * k / n for k in range(n)}
        for job, w in jobs.items():
            executor.submit(job, recipe(executor_zoo, w), FIDELITY)
        back = [executor.wait() for _ in jobs]
        ids = [job for job, _ in back]
        assert sorted(ids) == sorted(jobs), f"submitted {sorted(jobs)}, got back {ids}"
        for job, outcome in back:
            assert isinstance(outcome, Outcome)
            assert outcome.error is None, f"job {job} failed: {outcome.error}"
            assert set(outcome.values) >= {"addition/exact_match", "cost/params", "cost/layers"}
            assert all(isinstance(v, float) for v in outcome.values.values())
            assert outcome.seconds >= 0

    def test_recipes_score_as_in_the_serial_executor(self, executor, executor_pool, executor_zoo, serial_scores):
        recipes = {executor_pool.job(): recipe(executor_zoo, w) for w in (0.0, 0.3, 1.0)}
        for job, r in recipes.items():
            executor.submit(job, r, FIDELITY)
        for _ in recipes:
            job, outcome = executor.wait()
            assert outcome.error is None, outcome.error
            assert outcome.values == pytest.approx(serial_scores(recipes[job]), rel=1e-6)
        # Every example (fidelity None) as well.
        job = executor_pool.job()
        executor.submit(job, recipes[min(recipes)], None)
        got, outcome = executor.wait()
        assert got == job and outcome.values == pytest.approx(serial_scores(recipes[min(recipes)], None), rel=1e-6)

    def test_a_recipe_that_cannot_merge_fails_its_job_not_the_executor(self, executor, executor_pool, executor_zoo):
        broken = {executor_pool.job(): (why, r) for why, r in broken_recipes(executor_zoo).items()}
        good = executor_pool.job()
        for job, (_, r) in broken.items():
            executor.submit(job, r, FIDELITY)
        executor.submit(good, recipe(executor_zoo), FIDELITY)
        back = dict(executor.wait() for _ in range(len(broken) + 1))
        assert sorted(back) == sorted([*broken, good])
        for job, (why, _) in broken.items():
            outcome = back[job]
            assert isinstance(outcome, Outcome)
            assert outcome.values is None, f"{why}: scored {outcome.values}"
            assert isinstance(outcome.error, str) and outcome.error, f"{why}: no reason given"
        assert back[good].error is None and back[good].values, back[good].error
        # and the executor goes on
        job = executor_pool.job()
        executor.submit(job, recipe(executor_zoo, 0.25), FIDELITY)
        assert executor.wait()[0] == job

    def test_closing_another_executor_leaves_this_one_working(self, executor, executor_pool, executor_kind,
                                                              executor_zoo, open_new):
        executor_pool.drop(executor_kind, close=False)  # shared again only if it survives
        try:
            other = open_new()  # a second one at the same time (a notebook, a test session)
            call_with_limit(other.close)
            job = executor_pool.job()
            executor.submit(job, recipe(executor_zoo), FIDELITY)
            got, outcome = executor.wait()
            assert got == job and outcome.values is not None, outcome.error
        except BaseException:
            with contextlib.suppress(Exception):
                executor.close()
            raise
        executor_pool.open[executor_kind] = executor

    def test_killed_workers_are_reported_not_hung_on(self, executor_pool, executor_kind, executor_worker,
                                                      executor_zoo, open_new, tmp_path):
        # The shared one gives way (workers, Ray's CPUs) to one also running a gate task, used up here.
        executor_pool.drop(executor_kind)
        gate = Gate.write(tmp_path / "gate", passes=1)  # evaluation 0 passes, the later ones wait
        executor = _Tracked(lambda: open_new(gate.worker(executor_worker)))
        try:
            self._kill_and_wait(executor, executor_pool, executor_zoo, gate)
        finally:
            gate.release()  # a held evaluation that was not killed goes on (a failed test)
            call_with_limit(executor.close)  # closed twice, busy
            call_with_limit(executor.close)

    def test_close_twice_is_safe(self, open_new):
        idle = open_new()  # never given a job (the test above closes a busy one twice)
        call_with_limit(idle.close)
        call_with_limit(idle.close)

    def _kill_and_wait(self, executor, executor_pool, executor_zoo, gate: Gate):
        first = executor_pool.job()
        executor.submit(first, recipe(executor_zoo), FIDELITY)
        assert executor.wait()[1].values is not None  # a worker is up (the gate let it through)
        if gate.claims()[0] == os.getpid():
            pytest.skip("no worker processes to kill: this executor's workers run in the test process")
        in_flight = [executor_pool.job() for _ in range(executor.slots + 1)]
        for k, job in enumerate(in_flight):
            executor.submit(job, recipe(executor_zoo, 0.2 + 0.1 * k), FIDELITY)
        held = gate.wait_held(executor.slots, WAIT_LIMIT)  # the cue: one held in each slot, the last queued
        pids = {h.pid for h in held if h.here} | (executor.children & _children())
        killed = call_with_limit(lambda: self.kill_workers(executor.executor, pids), what="kill_workers")
        assert killed, f"kill_workers killed no worker; evaluations are held in {held}"
        gate.wait_killed(held, WAIT_LIMIT)  # in flight at the kill: each ended with its worker
        gate.release()  # the jobs run again on replacement workers go through
        back = []
        try:
            while len(back) < len(in_flight):
                back.append(executor.wait())
            # Every job came back (run again on a new worker, or failed with the reason): the
            # next one runs on a live worker, or the loss is reported.
            last = executor_pool.job()
            executor.submit(last, recipe(executor_zoo), FIDELITY)
            back.append(executor.wait())
            in_flight.append(last)
        except WorkerLost as e:
            assert str(e), "WorkerLost needs a reason"
            return
        assert sorted(job for job, _ in back) == sorted(in_flight)
        assert all(isinstance(o, Outcome) and (o.values is not None or o.error) for _, o in back)
