"""The pool executor: ``workers`` processes on this machine, each with its own resident model.

A small pool of its own rather than ``concurrent.futures``, which cannot replace
one dead worker (a broken pool stops everything). Each slot is one spawned
process (a forked torch with live OpenMP threads can hang) that builds one
``Worker`` and then serves jobs over a pipe, one at a time; jobs travel as
recipe YAML. A worker that dies mid-evaluation (killed, out of host memory) is
replaced and its evaluation re-queued up to ``max_retries`` times, then failed
with the reason; an evaluation past ``timeout`` seconds has its worker killed
and replaced and fails. A worker that cannot even start (a bad device, missing
models) stops the search with its reason, since every replacement would fail
the same way; one killed while starting is replaced, unless its slot's workers
die before they are up three times in a row.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass

from evomerge.search.executors import NoOptions, Outcome, WorkerLost, WorkerSpec, worker_died

_READY = "ready"
_START_TRIES = 3  # a slot whose worker dies this many times in a row before it is up stops the search


def _serve(spec: WorkerSpec, conn) -> None:
    """A worker process: build the worker, then evaluate jobs until the pipe closes."""
    # Ctrl-C reaches the terminal's whole process group; the controller answers it and closes
    # the pool, so a worker's own KeyboardInterrupt would only print a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from evomerge.recipe import Recipe
        from evomerge.search.executors.worker import Worker

        worker = Worker(spec)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the search
        conn.send(("start-failed", f"{type(e).__name__}: {e}"))
        return
    conn.send((_READY, os.getpid()))
    while True:
        try:
            job, recipe_yaml, fidelity = conn.recv()
        except (EOFError, OSError):
            return
        try:
            outcome = worker.evaluate(Recipe.from_yaml(recipe_yaml), fidelity)
        except Exception as e:  # noqa: BLE001 - the job failed, the worker goes on
            outcome = Outcome(None, f"worker failed: {type(e).__name__}: {e} "
                                    f"({traceback.format_exc(limit=1).strip().splitlines()[-1]})", 0.0)
        conn.send((job, outcome))


@dataclass
class _Job:
    job: int
    recipe_yaml: str
    fidelity: int | None
    attempt: int = 0
    started: float = 0.0


class _Slot:
    def __init__(self, ctx, spec: WorkerSpec) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(spec, child), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.job: _Job | None = None
        self.busy = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


class PoolExecutor:
    Options = NoOptions

    def __init__(self, worker: WorkerSpec, settings, options=None, *, tasks=None) -> None:
        self.spec = worker
        self.slots = (os.cpu_count() or 1) if settings.workers == "auto" else int(settings.workers)
        self.max_retries = settings.max_retries
        self.timeout = settings.timeout
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(self._ctx, worker) for _ in range(self.slots)]
        self._queue: deque[_Job] = deque()
        self._done: deque = deque()
        self.deaths = 0
        self._ready_at: dict[int, float] = {}  # slot -> when its first worker was up
        self._start_deaths = [0] * self.slots  # per slot: workers in a row that died before they were up

    # -- the executor contract ---------------------------------------------------------

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        self._queue.append(_Job(job, recipe.to_yaml(), fidelity))
        self._dispatch()

    def wait(self) -> tuple[int, Outcome]:
        from multiprocessing.connection import wait as wait_any

        while not self._done:
            if not self._queue and not any(s.job for s in self._slots):
                raise WorkerLost("pool executor: wait() with no job submitted")
            watch = {}
            for s in self._slots:
                watch[s.conn] = s
                watch[s.process.sentinel] = s
            ready = wait_any(list(watch), timeout=self._next_deadline())
            if not ready:
                self._expire()
            for r in ready:
                slot = watch[r]
                if slot not in self._slots:  # replaced already (its pipe and sentinel both fired)
                    continue
                if r is slot.conn:
                    self._receive(slot)
                elif not slot.process.is_alive():
                    self._died(slot)
            self._dispatch()
        return self._done.popleft()

    def close(self) -> None:
        for s in self._slots:
            try:
                s.conn.close()  # an idle worker reads EOF and exits, cleaning up after itself
            finally:
                s.process.join(timeout=0 if s.job is not None else 5)
                if s.process.is_alive():
                    s.process.kill()
                s.process.join(timeout=10)
        self._slots = []

    def utilisation(self) -> list[float]:
        """Busy time / wall time per slot, from when its first worker was up (start-up is not
        idling at a barrier; replacing a dead worker counts as idle)."""
        now = time.monotonic()
        return [s.busy / max(now - self._ready_at[i], 1e-9) for i, s in enumerate(self._slots)
                if i in self._ready_at]

    # -- internals -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for s in self._slots:
            if not self._queue:
                return
            if s.ready and s.job is None and s.process.is_alive():
                s.job = self._queue.popleft()
                s.job.started = time.monotonic()
                with contextlib.suppress(BrokenPipeError, OSError):  # died just now: the sentinel says so
                    s.conn.send((s.job.job, s.job.recipe_yaml, s.job.fidelity))

    def _receive(self, slot: _Slot) -> None:
        try:
            message = slot.conn.recv()
        except (EOFError, OSError):
            if slot.process.is_alive():
                slot.process.join(timeout=5)
            self._died(slot)
            return
        tag, payload = message
        if tag == "start-failed":
            self.close()
            raise WorkerLost(
                f"a search worker process could not start ({payload}); check the models, the "
                f"device and memory, then continue with `evomerge resume RUN_DIR`."
            )
        if tag == _READY:
            slot.ready = True
            self._ready_at.setdefault(self._slots.index(slot), time.monotonic())
            self._start_deaths[self._slots.index(slot)] = 0
            return
        job = slot.job
        slot.job = None
        if job is None or job.job != tag:  # pragma: no cover - a reply from a killed job
            return
        slot.busy += time.monotonic() - job.started
        self._done.append((job.job, payload))

    def _died(self, slot: _Slot) -> None:
        """The slot's process is gone: replace it; re-queue or fail the job it held."""
        i = self._slots.index(slot)
        code = slot.process.exitcode
        job = slot.job
        if not slot.ready and job is None:
            # Killed once while loading (by an operator, or memory pressure that passed): bad
            # luck, start another. Again and again: the machine cannot hold a worker.
            self._start_deaths[i] += 1
            if self._start_deaths[i] >= _START_TRIES:
                self.close()
                raise WorkerLost(
                    f"a search worker process died while starting, {_START_TRIES} times in a row "
                    f"(last exit code {code}); check memory and the device, then continue with "
                    f"`evomerge resume RUN_DIR`."
                )
        self.deaths += 1
        slot.kill()
        self._slots[i] = _Slot(self._ctx, self.spec)
        if job is None:
            return
        self._slots[i].busy = slot.busy + (time.monotonic() - job.started)
        reason = f"exit code {code}" if code is not None else "no exit code"
        if code is not None and code < 0:
            reason = f"killed by signal {-code}"
        if job.attempt < self.max_retries:
            job.attempt += 1
            self._queue.appendleft(job)
            return
        self._done.append((job.job, Outcome(None, worker_died(job.attempt + 1, reason),
                                            time.monotonic() - job.started)))

    def _next_deadline(self) -> float | None:
        running = [s.job.started for s in self._slots if s.job is not None]
        if self.timeout is None or not running:
            return None
        return max(0.0, min(running) + self.timeout - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for i, s in enumerate(self._slots):
            if s.job is not None and now - s.job.started >= self.timeout:
                job = s.job
                s.kill()
                self._slots[i] = _Slot(self._ctx, self.spec)
                self._slots[i].busy = s.busy + (now - job.started)
                self._done.append((job.job, Outcome(
                    None, f"evaluation timed out after {self.timeout:g} s (executor.timeout); its "
                    f"worker was replaced", now - job.started)))
