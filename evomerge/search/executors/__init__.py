"""Executors: where a run's evaluations are merged and scored, behind one small contract.

The controller hands an executor jobs (an evaluation id, a recipe, a fidelity)
and takes back one finished job at a time, in completion order; that order is
what the ledger records and a resume replays, so every executor looks the same
to the loop. A ``Worker`` (``worker.py``) holds the source weights and one
resident model and merges each candidate into it in memory before scoring it;
executors decide where workers live:

* ``serial`` - one worker in the controller's process (``workers: 1``);
* ``pool`` - worker processes on this machine (``workers: N``);
* ``ray`` - one Ray actor per slot, on this machine or a Ray cluster, with
  per-actor resources (GPUs, fractions of GPUs, custom resources).

``executor: {kind: ...}`` in the run config picks one through ``EXECUTORS``; a
config without ``kind`` gets serial for one worker and pool for more. A new
executor is one module with a class following ``Executor`` and one entry in
``EXECUTORS`` (or a package entry point in ``evomerge.executors``);
``evomerge.testing.executors`` is the suite it must pass.

Failures of a recipe or a task (cannot merge, a task raised) come back as an
``Outcome`` with the reason, never as an exception: they fail the trial, not the
search. A worker that *dies* (killed, out of host memory, a poisoned CUDA
context) is not the recipe's fault: executors that run workers out of process
(pool, ray) replace it and run its evaluation again, up to ``max_retries``
times, then report it failed ("worker died twice: ..."); an evaluation past
``timeout`` seconds fails and its worker is replaced. Only when workers cannot
run at all (none can start) does ``wait`` raise ``WorkerLost``; the evaluations
in flight then stay unfinished in the ledger, and a resume runs them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from evomerge.errors import EvomergeError
from evomerge.registry import Registry
from evomerge.validation import StrictModel


@dataclass
class Outcome:
    values: dict[str, float] | None
    error: str | None
    seconds: float
    # per task, each scored example's outcome (``per_example_details``) where the task reports
    # them: what anchor subsets are chosen from; not recorded in the ledger
    examples: dict[str, dict] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """How a worker loads a task itself (workers in other processes cannot share ours)."""

    name: str  # a task name, or the absolute path of a task YAML given as a path
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
    dtype: str | None = None  # sources and resident model (None: sources as stored, model float32)
    trust_remote_code: bool = False  # the run config's: the base model's own code may load
    sources_on: str = "auto"  # on a GPU: sources on the device or the host (merge.placement)
    extra: dict = field(default_factory=dict)


def worker_died(attempts: int, reason: str) -> str:
    """Why an evaluation failed whose worker died on each of its ``attempts``."""
    times = {1: "once", 2: "twice"}.get(attempts, f"{attempts} times")
    return f"worker died {times}: {reason}"


class WorkerLost(EvomergeError):
    """A worker died; the evaluations it held did not finish (they are not failures)."""


class NoOptions(StrictModel):
    """An executor kind without options of its own."""


class Executor(Protocol):
    """The contract. ``slots``: how many jobs may be in flight at once.

    Construction: ``cls(worker: WorkerSpec, settings: ExecutorSpec, options: cls.Options,
    tasks=None)``; ``tasks``, when given, are the controller's loaded tasks, which an
    in-process executor may reuse. ``Options`` (a pydantic model) validates the kind's own
    keys of the ``executor:`` section before any model loads.
    """

    Options: ClassVar[type[StrictModel]]
    slots: int

    def submit(self, job: int, recipe, fidelity) -> None:
        """Queue ``recipe`` for scoring at ``fidelity`` (examples per task, or an
        ``AnchoredLevel``: executors pass it on untouched); ``job`` is unique in the run."""

    def wait(self) -> tuple[int, Outcome]:
        """Block until a submitted job finishes; return it. Raises ``WorkerLost``."""

    def close(self) -> None:
        """Stop workers and drop queued jobs; safe to call twice."""


EXECUTORS: Registry[Any] = Registry(
    "executor kind",
    {
        "serial": "evomerge.search.executors.serial:SerialExecutor",
        "pool": "evomerge.search.executors.pool:PoolExecutor",
        "ray": "evomerge.search.executors.ray:RayExecutor",
    },
    entry_points="evomerge.executors",
)


def executor_class(settings):
    """The class ``settings`` (an ``ExecutorSpec``) names, its options checked: errors name
    ``executor.<key>`` and the fix, before any model loads."""
    from pydantic import ValidationError

    from evomerge.validation import problems

    kind = settings.resolved_kind
    if kind not in EXECUTORS:
        raise EvomergeError(f"executor.kind: {EXECUTORS.unknown_message(kind)}")
    cls = EXECUTORS.get(kind)
    try:
        options = cls.Options.model_validate(settings.options)
    except ValidationError as e:
        raise EvomergeError(f"executor ({kind}): {problems(e)}.") from None
    return cls, options


def open_executor(settings, worker: WorkerSpec, *, tasks=None) -> Executor:
    cls, options = executor_class(settings)
    return cls(worker, settings, options, tasks=tasks)
