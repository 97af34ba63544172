"""The serial executor: one worker in the controller's process.

Jobs run one at a time, in submission order, inside ``wait``. A crash of this
worker is the controller's crash: resume covers it.
"""

from __future__ import annotations

import time
from collections import deque

from evomerge.search.executors import NoOptions, Outcome, WorkerSpec
from evomerge.search.executors.worker import Worker


class SerialExecutor:
    Options = NoOptions
    slots = 1

    def __init__(self, worker: WorkerSpec, settings=None, options=None, *, tasks=None) -> None:
        self.worker = Worker(worker, tasks)
        self._queue: deque = deque()
        self._busy = 0.0
        self._t0 = time.monotonic()

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        self._queue.append((job, recipe, fidelity))

    def wait(self) -> tuple[int, Outcome]:
        job, recipe, fidelity = self._queue.popleft()
        t = time.monotonic()
        outcome = self.worker.evaluate(recipe, fidelity)
        self._busy += time.monotonic() - t
        return job, outcome

    def utilisation(self) -> list[float]:
        """Busy time / wall time since the worker was ready (the loop's own time is the rest)."""
        return [self._busy / max(time.monotonic() - self._t0, 1e-9)]

    def close(self) -> None:
        self._queue.clear()
