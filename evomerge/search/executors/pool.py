"""The pool executor: ``workers`` processes on this machine, each with its own resident model.

Processes are spawned (a forked torch with live OpenMP threads can hang) and
each builds one ``Worker`` at start; jobs travel as recipe YAML. Results come
back in completion order.
"""

from __future__ import annotations

from collections import deque

from evomerge.search.executors import NoOptions, Outcome, WorkerLost, WorkerSpec
from evomerge.search.executors.worker import Worker

_WORKER: Worker | None = None  # this process's worker, in a pool process


def _start_worker(spec: WorkerSpec) -> None:
    global _WORKER
    _WORKER = Worker(spec)


def _run_job(recipe_yaml: str, fidelity: int | None) -> Outcome:
    from evomerge.recipe import Recipe

    assert _WORKER is not None
    return _WORKER.evaluate(Recipe.from_yaml(recipe_yaml), fidelity)


class PoolExecutor:
    Options = NoOptions

    def __init__(self, worker: WorkerSpec, settings, options=None, *, tasks=None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import os

        self.slots = (os.cpu_count() or 1) if settings.workers == "auto" else settings.workers
        self._pool = ProcessPoolExecutor(
            max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(worker,),
        )
        self._futures: dict = {}
        self._done: deque = deque()

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        from concurrent.futures.process import BrokenProcessPool

        try:
            self._futures[self._pool.submit(_run_job, recipe.to_yaml(), fidelity)] = job
        except BrokenProcessPool as e:
            self.close()
            raise WorkerLost(
                f"a search worker process died ({e}); continue with `evomerge resume RUN_DIR`."
            ) from None

    def wait(self) -> tuple[int, Outcome]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures
        from concurrent.futures.process import BrokenProcessPool

        while not self._done:
            done, _ = wait_futures(list(self._futures), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: self._futures[f]):
                job = self._futures.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool as e:
                    # Not the recipes' fault: the jobs in flight stay unfinished in the ledger
                    # and a resume runs them again.
                    self.close()
                    raise WorkerLost(
                        f"a search worker process died ({e}); the evaluations in flight were not "
                        f"recorded. Check memory and the worker's device, then continue with "
                        f"`evomerge resume RUN_DIR` (finished trials are kept)."
                    ) from None
                except Exception as e:  # noqa: BLE001 - the job raised in the worker: it failed
                    outcome = Outcome(None, f"worker failed: {type(e).__name__}: {e}", 0.0)
                self._done.append((job, outcome))
        return self._done.popleft()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
