"""The Ray executor: one long-lived actor per slot, on this machine or across a Ray cluster.

Each actor builds one ``Worker`` when it starts: it loads the source weights
from the model directories (memory-mapped safetensors, so actors on one node
share the page cache; never through Ray's object store, whose objects die with
their owner and would break actor restarts) and one resident model, into which
every candidate is merged in memory and scored. This is the only module that
imports Ray.

Placement: each actor asks Ray for ``resources`` (``num_gpus: 1`` a whole GPU,
``0.25`` four small-model actors per GPU, ``0`` CPU only; ``num_cpus``; custom
resources). The run config's ``device`` says cpu or cuda; Ray says which GPU
(it sets ``CUDA_VISIBLE_DEVICES`` for the actor, so ``cuda`` is the one it
assigned). ``workers: auto`` starts as many actors as the cluster's resources
fit.

Faults: an actor that dies mid-evaluation (killed, node lost, a CUDA error that
poisons the process) is restarted by Ray (``max_restarts``) or replaced, and
its evaluation is re-queued up to ``max_retries`` times, then reported failed
with the reason; the search goes on. An evaluation running past ``timeout``
seconds has its actor killed (and restarted) and fails. Model directories, task
files and user modules must exist at the same path on every node: that is
checked from each node before the first candidate, naming the node and the path.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from evomerge.errors import EvomergeError
from evomerge.search.executors import Outcome, WorkerSpec, worker_died
from evomerge.validation import StrictModel


class RayResources(StrictModel):
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per actor (also its torch threads).")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per actor; fractions pack actors on a GPU.")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per actor.")


class RayOptions(StrictModel):
    address: str | None = Field(
        default=None,
        description="null: start a Ray runtime in this process; auto: join the running cluster; "
        "ray://HOST:PORT: a Ray client connection.",
    )
    resources: RayResources = RayResources()
    max_restarts: int = Field(default=3, ge=0, description="Restarts Ray gives a dead actor.")
    check_paths: bool = Field(default=True, description="Check every node sees the models and tasks.")


def _ray():
    import ray

    return ray


class _ActorBody:
    """What runs inside each actor process (a plain class: tests call it directly)."""

    def __init__(self, spec: WorkerSpec, device: str, threads: int | None) -> None:
        from evomerge.search.executors.worker import Worker

        if device.startswith("cuda"):
            ids = _ray().get_gpu_ids()
            if not ids:
                raise EvomergeError("device is cuda but Ray assigned this worker no GPU; set "
                                    "executor.resources.num_gpus above 0.")
            device = "cuda"  # Ray's CUDA_VISIBLE_DEVICES makes the assigned GPU the first
        from dataclasses import replace

        self.worker = Worker(replace(spec, device=device, torch_threads=threads or spec.torch_threads))

    def evaluate(self, recipe_yaml: str, fidelity: int | None) -> Outcome:
        from evomerge.recipe import Recipe

        return self.worker.evaluate(Recipe.from_yaml(recipe_yaml), fidelity)

    def pid(self) -> int:
        return os.getpid()


def _missing(paths: list[str]) -> tuple[str, list[str]]:
    """Run on one node: which of ``paths`` it cannot see (a Hub snapshot: or sees incomplete)."""
    import socket

    from evomerge.io.hub import snapshot_complete, snapshot_identity

    return socket.gethostname(), [
        p for p in paths
        if not os.path.exists(p) or (snapshot_identity(p) is not None and not snapshot_complete(p))
    ]


def _fetch_missing(paths: list[str]) -> list[str]:
    """Run on one node: fetch the Hub snapshots among ``paths`` into the cache at their path
    (where the node may download); returns those still missing."""
    from evomerge.io.hub import fetch_snapshot

    return [p for p in paths if not fetch_snapshot(p)]


@dataclass
class _Running:
    """One evaluation: waiting for a slot, or running on ``slot`` since ``started``."""

    job: int
    recipe_yaml: str
    fidelity: int | None
    slot: int
    started: float
    attempt: int = 0


class RayExecutor:
    Options = RayOptions

    def __init__(self, worker: WorkerSpec, settings, options: RayOptions, *, tasks=None) -> None:
        ray = _ray()
        self.options = options
        self.max_retries = settings.max_retries
        self.timeout = settings.timeout
        self._owns_runtime = False  # shut Ray down on close only if this executor started it
        if not ray.is_initialized():
            if options.address is None:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
                self._owns_runtime = True
            else:
                ray.init(address=options.address, log_to_driver=False, configure_logging=False)
        res = options.resources
        if str(worker.device).startswith("cuda") and res.num_gpus <= 0:
            raise EvomergeError(
                "executor (ray): device is cuda but resources.num_gpus is 0; give each actor a GPU "
                "share (e.g. resources: {num_gpus: 1}, or 0.5 to pack two actors per GPU)."
            )
        n = self._auto_workers(res) if settings.workers == "auto" else int(settings.workers)
        if n < 1:
            raise EvomergeError(
                f"executor (ray): the cluster has no room for one actor with {res.model_dump()}; "
                f"its resources: {ray.cluster_resources()}."
            )
        if options.check_paths:
            self._check_paths(worker, tasks)
        threads = settings.torch_threads or max(1, int(res.num_cpus))
        self._actor_cls = ray.remote(_ActorBody).options(
            num_cpus=res.num_cpus, num_gpus=res.num_gpus, resources=res.custom or None,
            max_restarts=options.max_restarts, max_task_retries=0,
        )
        self._args = (worker, str(worker.device), threads)
        self.slots = n
        self.actors = [self._actor_cls.remote(*self._args) for _ in range(n)]
        self._free: deque[int] = deque()  # slots whose actor is up and idle
        self._pings: dict = {}  # ObjectRef -> slot: waiting for that actor to be up (again)
        self._failed_starts = [0] * n
        for slot in range(n):
            self._ping(slot)
        self._running: dict = {}  # ObjectRef -> _Running
        self._queue: deque[_Running] = deque()  # waiting for a slot (also re-queued after a death)
        self._done: deque = deque()
        self.busy_seconds = [0.0] * n
        self._ready_at: dict[int, float] = {}  # slot -> when its first actor was up
        self.deaths = 0

    # -- placement -----------------------------------------------------------------------

    def _auto_workers(self, res: RayResources) -> int:
        total = _ray().cluster_resources()
        wants = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom}
        fits = [int(total.get(k, 0.0) // v) for k, v in wants.items() if v > 0]
        return min(fits) if fits else 1

    def _check_paths(self, worker: WorkerSpec, tasks) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from evomerge.io.hub import snapshot_identity

        ray = _ray()
        paths = [str(Path(p).resolve()) for p in worker.sources.values()]
        paths += [str(p) for p in _task_paths(worker, tasks)]
        probe, fetch = ray.remote(num_cpus=0)(_missing), ray.remote(num_cpus=0)(_fetch_missing)
        refs = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            refs[probe.options(scheduling_strategy=strategy).remote(paths)] = (node, strategy)
        for ref, (node, strategy) in refs.items():
            try:
                host, missing = ray.get(ref, timeout=120)
            except Exception:  # noqa: BLE001 - a node that died or cannot run the probe holds no actor
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                continue
            if any(snapshot_identity(p) is not None for p in missing):
                # A download takes as long as it takes (no probe's time limit); a node that cannot
                # fetch refuses the run rather than being skipped, as an actor may still land there.
                missing = ray.get(fetch.options(scheduling_strategy=strategy).remote(missing))
            if missing:
                raise EvomergeError(
                    f"executor (ray): node {node.get('NodeManagerAddress')} ({host}) cannot see "
                    f"{missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}. "
                    f"Model directories, task files and evaluator modules must exist at the same "
                    f"path on every node (shared storage, or a copy at the same path). A Hub id's "
                    f"snapshot is fetched by a node that may download (not HF_HUB_OFFLINE there) "
                    f"into a Hugging Face cache at the controller's path: set HF_HUB_CACHE alike "
                    f"on every node, or share the cache."
                )

    # -- the executor contract ---------------------------------------------------------

    def submit(self, job: int, recipe, fidelity: int | None) -> None:
        self._queue.append(_Running(job, recipe.to_yaml(), fidelity, -1, 0.0))
        self._dispatch()

    def wait(self) -> tuple[int, Outcome]:
        ray = _ray()
        while not self._done:
            if not self._running and not self._queue:
                raise EvomergeError("ray executor: wait() with no job submitted")
            refs = list(self._running) + list(self._pings)
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._next_deadline())
            if not ready:
                self._expire()
            elif ready[0] in self._pings:
                self._on_ping(ready[0])
            else:
                self._on_result(ready[0])
            self._dispatch()
        return self._done.popleft()

    def close(self) -> None:
        ray = _ray()
        for actor in getattr(self, "actors", []):
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []
        self._running.clear()
        self._pings.clear()
        if self._owns_runtime and ray.is_initialized():
            ray.shutdown()
            self._owns_runtime = False

    def utilisation(self) -> list[float]:
        """Busy time / wall time per slot, from when its first actor was up (restarts count as
        idle time)."""
        now = time.monotonic()
        return [self.busy_seconds[i] / max(now - t, 1e-9) for i, t in sorted(self._ready_at.items())]

    # -- dispatching -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._free and self._queue:
            run = self._queue.popleft()
            run.slot = self._free.popleft()
            run.started = time.monotonic()
            self._running[self.actors[run.slot].evaluate.remote(run.recipe_yaml, run.fidelity)] = run

    def _ping(self, slot: int) -> None:
        self._pings[self.actors[slot].pid.remote()] = slot

    def _on_ping(self, ref) -> None:
        from ray.exceptions import RayActorError

        ray = _ray()
        slot = self._pings.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as e:
            # The actor could not start (or died again before it was up): a new one, unless
            # this slot keeps failing, which is a setup problem rather than bad luck.
            self._failed_starts[slot] += 1
            if self._failed_starts[slot] > self.options.max_restarts:
                self.close()
                raise EvomergeError(f"executor (ray): a worker actor cannot start: {_reason(e)}") from None
            self.actors[slot] = self._actor_cls.remote(*self._args)
            self._ping(slot)
            return
        self._failed_starts[slot] = 0
        self._ready_at.setdefault(slot, time.monotonic())
        self._free.append(slot)

    def _on_result(self, ref) -> None:
        from ray.exceptions import RayActorError, WorkerCrashedError

        ray = _ray()
        run = self._running.pop(ref)
        self.busy_seconds[run.slot] += time.monotonic() - run.started
        try:
            outcome = ray.get(ref)
        except (RayActorError, WorkerCrashedError) as e:
            self._on_death(run, e)
            return
        except Exception as e:  # noqa: BLE001 - raised inside the actor: this trial fails
            outcome = Outcome(None, f"worker failed: {type(e).__name__}: {e}", time.monotonic() - run.started)
        self._free.append(run.slot)
        self._done.append((run.job, outcome))

    # -- faults ------------------------------------------------------------------------------

    def _on_death(self, run: _Running, err: Exception) -> None:
        """The actor died under ``run``: wait for it to be back (Ray restarts it; a new one if
        its restarts are used up), and run the evaluation again or fail it."""
        self.deaths += 1
        self._ping(run.slot)  # the slot is free again once this answers
        if run.attempt < self.max_retries:
            run.attempt += 1
            self._queue.appendleft(run)
            return
        self._done.append((run.job, Outcome(
            None, worker_died(run.attempt + 1, _reason(err)), time.monotonic() - run.started)))

    def _next_deadline(self) -> float | None:
        if self.timeout is None or not self._running:
            return None
        first = min(r.started for r in self._running.values())
        return max(0.0, first + self.timeout - time.monotonic())

    def _expire(self) -> None:
        """Evaluations past the timeout: kill their actors (Ray restarts them) and fail them."""
        ray = _ray()
        now = time.monotonic()
        for ref, run in list(self._running.items()):
            if now - run.started >= self.timeout:
                del self._running[ref]
                self.busy_seconds[run.slot] += now - run.started
                ray.kill(self.actors[run.slot], no_restart=False)
                self._ping(run.slot)
                self._done.append((run.job, Outcome(
                    None, f"evaluation timed out after {self.timeout:g} s (executor.timeout); its "
                    f"worker was restarted", now - run.started)))


def _reason(err: Exception) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _task_paths(worker: WorkerSpec, tasks) -> list[Path]:
    """Task files the actors load: each task's YAML and its folder (data and modules are
    resolved from there)."""
    from evomerge.eval.task import find_task

    out: list[Path] = []
    for t in worker.tasks:
        if t.name.startswith("lm_eval:"):  # an inline lm-eval task: no file (its paths below)
            continue
        try:
            path = find_task(t.name)
        except EvomergeError:
            continue
        out += [path, path.parent]
    for task in tasks or []:
        out += task.needed_paths()
    return list(dict.fromkeys(out))
