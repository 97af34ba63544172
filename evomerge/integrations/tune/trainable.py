"""The Tune trainable: merge the recipe a Tune config describes and score it, level by level.

A trial is one candidate recipe. Its trainable merges the recipe into a resident model and
scores every task with evomerge's own ``Worker`` (``search/executors/worker.py``, what the
serial, pool and Ray executors run), once per fidelity level of the run config, cheapest first,
and reports after each level: ``fitness`` (the run's scalarised fitness, larger is better, what
evomerge ranks and tells single-objective optimisers), every score under evomerge's key
(``addition/exact_match``), the ``rung`` (0-based level), ``examples`` scored, and
``fidelity_budget`` = ``eta ** rung``. With ``time_attr="fidelity_budget"``, ``max_t`` =
``eta ** (levels - 1)`` and ``reduction_factor`` = ``eta`` (``schedule_options``), ASHA's and
HyperBand's rungs fall on evomerge's fidelity levels: a scheduler that stops a trial stops it
between levels, as successive halving would.

The worker (source weights and a resident model) is built once per trial actor and kept: Tune
reuses a function trainable's actors, so later trials only merge and score. After each level
but the last the trial saves a small checkpoint (the rung it reached), so a trial restarted by
``Tuner.restore`` or exploited by PBT goes on at the next level instead of starting over.

A recipe that cannot be merged, or a task that fails, fails the trial (``TrialFailed``, with
evomerge's reason): Tune records it as errored and a wrapped evomerge optimiser is told it
failed, as evomerge's own loop does.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from ray import tune

from evomerge.errors import EvomergeError
from evomerge.integrations.tune.prepared import TuneRun
from evomerge.integrations.tune.space import recipe_of
from evomerge.search.executors import WorkerSpec
from evomerge.search.objectives import fitness

FITNESS = "fitness"  # the metric to give TuneConfig (mode "max")
BUDGET = "fidelity_budget"  # the schedulers' time_attr: eta ** rung
_STATE = "evomerge_trial.json"  # in a trial's checkpoint: the rung it reached

_cached: tuple[str, object] | None = None  # this process's worker: (its spec, as text; the Worker)


class TrialFailed(EvomergeError):
    """The trial's recipe could not be merged or scored; the message says why."""


def schedule_options(run: TuneRun) -> dict:
    """``time_attr``, ``max_t`` and ``reduction_factor`` for ``ASHAScheduler`` or
    ``HyperBandScheduler``, so their rungs are the run's fidelity levels."""
    return {"time_attr": BUDGET, "max_t": run.eta ** (len(run.levels) - 1), "reduction_factor": run.eta}


def evomerge_trainable(run: TuneRun) -> Callable[[dict], None]:
    """The function trainable of ``run`` (from ``load_tune_run``), for ``tune.Tuner`` and
    ``Tuner.restore``."""

    def evomerge_trial(config: dict) -> None:
        run_trial(run, config)

    return evomerge_trial


def trial_metrics(run: TuneRun, rung: int, values: dict[str, float]) -> dict:
    """What a trial reports after scoring at ``rung``."""
    return {FITNESS: fitness(values, list(run.objectives)), "rung": rung, BUDGET: run.eta ** rung,
            "examples": run.examples(rung), **values}


def run_trial(run: TuneRun, config: dict) -> None:
    """One Tune trial (inside a Tune session): merge, then score and report at each level."""
    recipe = recipe_of(run.space, config)
    digest = recipe.content_hash()
    start = _resumed_rung(tune.get_checkpoint())
    worker = _worker(run.worker)
    top = len(run.levels) - 1
    for rung in range(start, top + 1):
        outcome = worker.evaluate(recipe, run.levels[rung])
        if outcome.values is None:
            level = run.levels[rung]
            raise TrialFailed(
                f"recipe {digest[:12]} failed at fidelity {'all' if level is None else level}: "
                f"{outcome.error}"
            )
        metrics = {**trial_metrics(run, rung, outcome.values), "seconds": outcome.seconds,
                   "recipe_hash": digest}
        if rung == top:  # the trial ends here: nothing to resume
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / _STATE).write_text(json.dumps({"rung": rung, "recipe_hash": digest}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _resumed_rung(checkpoint) -> int:
    """The level to start at: the one after the checkpoint's (0 without one)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = Path(folder) / _STATE
        return json.loads(state.read_text())["rung"] + 1 if state.is_file() else 0


def _worker(spec: WorkerSpec):
    """This process's worker for ``spec``, built on first use (loading the sources and the
    resident model costs seconds; merging a candidate, milliseconds)."""
    global _cached
    from evomerge.search.executors.worker import Worker

    key = repr(spec)
    if _cached is None or _cached[0] != key:
        _cached = None  # the old one's memory goes before the new one loads
        _cached = (key, Worker(spec))
    return _cached[1]
