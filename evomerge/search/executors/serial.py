"""The serial executor: one worker in the controller's process.

Jobs run one at a time, in submission order, inside ``wait``. A crash of this
worker is the controller's crash: resume covers it.
"""

from __future__ import annotations

from collections import deque

from evomerge.search.executors import NoOptions, Outcome, WorkerSpec
from evomerge.search.executors.worker import Worker


class SerialExecutor:
    Options = NoOptions
    slots = 1

    def __init__(self, worker: WorkerSpec, settings=None, options=None, *, tasks=None) -> None:
        self.worker = Worker(worker, tasks)
        self._queue: deque = deque()

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        self._queue.append((job, recipe, fidelity))

    def wait(self) -> tuple[int, Outcome]:
        job, recipe, fidelity = self._queue.popleft()
        return job, self.worker.evaluate(recipe, fidelity)

    def close(self) -> None:
        self._queue.clear()
