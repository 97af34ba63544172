"""Executors turn (recipe, fidelity) into scores.

A ``Worker`` keeps the source weights and one resident model in memory and
merges every candidate into that model before scoring it: no disk, no
reloading. Executors schedule jobs onto workers behind one small interface
(``slots``, ``submit``, ``wait``, ``close``) that the controller drives and a
Ray executor will implement the same way:

* ``SerialExecutor`` - one worker in this process;
* ``PoolExecutor`` - a few worker processes on this machine.

``wait`` hands back exactly one finished job at a time, so the controller
reacts to every completion in the same way whatever the executor; the order of
completions is what the ledger records and a resume replays. Failures (a recipe
that cannot be merged, a task that fails) come back as an outcome with the
reason, never as an exception.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.errors import EvomergeError


@dataclass
class Outcome:
    values: dict[str, float] | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class TaskSpec:
    """How a worker loads a task itself (workers in other processes cannot share ours)."""

    name: str
    split: str
    allow_test_split: bool


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; plain data, so it can be shipped to another process."""

    sources: dict[str, Path]
    base: str
    tasks: tuple[TaskSpec, ...]
    device: str = "cpu"
    torch_threads: int | None = None
    extra: dict = field(default_factory=dict)


class Worker:
    def __init__(self, spec: WorkerSpec, tasks=None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evomerge.eval import load_task
        from evomerge.merge.engine import InMemoryMerger

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.tasks = tasks or [
            load_task(t.name, split=t.split, fitness=True, allow_test_split=t.allow_test_split) for t in spec.tasks
        ]
        self.device = spec.device
        self.merger = InMemoryMerger(spec.sources, device=spec.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(spec.sources[spec.base]))
        self.model = (
            AutoModelForCausalLM.from_pretrained(str(spec.sources[spec.base]), dtype=torch.float32, use_safetensors=True)
            .to(spec.device)
            .eval()
        )

    def _release_memory(self) -> None:
        import torch

        if str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()

    def evaluate(self, recipe, fidelity: int | None) -> Outcome:
        t0 = time.perf_counter()
        try:
            plan = self.merger.plan(recipe)  # built once: it gives the depth and drives the merge
            if plan.num_layers != self.model.config.num_hidden_layers:
                from evomerge.merge.resident import fit_layers

                fit_layers(self.model, plan.num_layers)
            self.merger.merge(recipe, into=self.model, plan=plan)
        except EvomergeError as e:
            return Outcome(None, f"merge failed: {e}", time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - out of memory, a torch error: this trial fails, not the search
            self._release_memory()
            return Outcome(None, f"merge failed: {type(e).__name__}: {e}", time.perf_counter() - t0)
        values: dict[str, float] = {}
        for task in self.tasks:
            res = task.evaluate(self.model, self.tokenizer, fidelity)
            if not res.ok:
                return Outcome(None, f"task {task.name} failed: {res.error}", time.perf_counter() - t0)
            values.update({f"{task.name}/{k}": v for k, v in res.values.items()})
        return Outcome(values, None, time.perf_counter() - t0)


class SerialExecutor:
    """One worker in this process: jobs run one at a time, in submission order, inside ``wait``."""

    slots = 1

    def __init__(self, spec: WorkerSpec, tasks=None) -> None:
        self.worker = Worker(spec, tasks)
        self._queue: deque = deque()

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        self._queue.append((job, recipe, fidelity))

    def wait(self) -> tuple[int, Outcome]:
        job, recipe, fidelity = self._queue.popleft()
        return job, self.worker.evaluate(recipe, fidelity)

    def close(self) -> None:
        self._queue.clear()


# --- a pool of worker processes -----------------------------------------------------

_WORKER: Worker | None = None


def _start_worker(spec: WorkerSpec) -> None:
    global _WORKER
    _WORKER = Worker(spec)


def _run_job(recipe_yaml: str, fidelity: int | None) -> Outcome:
    from evomerge.recipe import Recipe

    assert _WORKER is not None
    return _WORKER.evaluate(Recipe.from_yaml(recipe_yaml), fidelity)


class PoolExecutor:
    """``workers`` processes, each with its own resident model; results in completion order."""

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.slots = workers
        # spawn: a forked torch with live OpenMP threads can hang.
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(spec,),
        )
        self._futures: dict = {}
        self._done: deque = deque()

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        from concurrent.futures.process import BrokenProcessPool

        try:
            self._futures[self._pool.submit(_run_job, recipe.to_yaml(), fidelity)] = job
        except BrokenProcessPool as e:
            self.close()
            raise EvomergeError(
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
                    # A worker process died (killed, out of host memory, a failed start). The jobs
                    # in flight are not the recipes' fault: leave them unfinished in the ledger so
                    # a resume runs them again, instead of recording them as failed.
                    self.close()
                    raise EvomergeError(
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


def make_executor(spec: WorkerSpec, workers: int = 1, tasks=None):
    if workers <= 1:
        return SerialExecutor(spec, tasks)
    return PoolExecutor(spec, workers)
