"""A run's constraints: bound to their tasks, judged on a trial's scores, told to the optimiser.

A constraint bounds one metric (``task/metric``, a key of the ledger's scores)
from above (``max``) or below (``min``). A trial is *feasible* when its scores at
the top fidelity meet every bound; ``best``, the front and ``export`` consider
feasible trials only, so a constrained search never reports one that is not.

Where the numbers come from: the ``cost`` task reads parameters, layers and
bytes off the merged model and measures latency (``evomerge.eval.cost``); any
other metric is a task's score. A constraint's task is evaluated with every
candidate even when no objective names it (it is added to the run's tasks: the
alternative, refusing such a run, would make "at least 0.5 on addition while
minimising size" need a dummy objective); ``cost/latency_ms_per_token`` loads
the cost task as ``cost_latency`` (the same task with latency measured).

When it is judged: task metrics at the top fidelity only, since a score on a
few examples estimates the full one too noisily to call a trial infeasible (a
successive-halving rung below the top records no violation for them). Metrics
of tasks that are not example-based (``size() is None``: the costs) do not
depend on fidelity, so they are judged at every rung, and a trial over a cost
bound is not promoted in place of a feasible one.

What is recorded and told: each evaluation's scores in the ledger gain one
``violation/<task>/<metric>/<max|min>`` value per judged constraint, the amount
by which the bound is exceeded in the metric's own units (0 when met); MLflow
logs them with the scores. The optimiser is told Optuna's form instead, one
value per constraint, <= 0 when feasible, relative to the bound so that
constraints of different units weigh alike: ``(value - max) / |max|`` or
``(min - value) / |min|`` (a bound of 0 divides by 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evomerge.config.run import RunConfig, RunConfigError
from evomerge.errors import EvomergeError

VIOLATION_PREFIX = "violation/"
# Metrics a task measures only when loaded under another name: (task, metric) -> task to load.
_LOAD_AS = {("cost", "latency_ms_per_token"): "cost_latency"}


@dataclass(frozen=True)
class BoundConstraint:
    key: str  # "task/metric", the name in the ledger's scores
    kind: Literal["max", "min"]
    bound: float
    any_fidelity: bool = False  # the metric does not depend on fidelity: judged at every rung

    @property
    def name(self) -> str:
        """Where its violation is recorded among an evaluation's scores."""
        return f"{VIOLATION_PREFIX}{self.key}/{self.kind}"

    def __str__(self) -> str:
        return f"{self.key} {'<=' if self.kind == 'max' else '>='} {self.bound:g}"

    def violation(self, value: float) -> float:
        """By how much ``value`` misses the bound, in the metric's units (0: it meets it)."""
        over = value - self.bound if self.kind == "max" else self.bound - value
        return max(0.0, float(over))

    def told(self, value: float) -> float:
        """Optuna's convention: <= 0 feasible, relative to the bound's magnitude."""
        over = value - self.bound if self.kind == "max" else self.bound - value
        return float(over) / (abs(self.bound) or 1.0)


def bind_constraints(config: RunConfig, config_path: Path, tasks: list) -> tuple[list, list[BoundConstraint]]:
    """The run's tasks, with those only constraints name added (or swapped for the variant that
    measures the metric), and its constraints. ``tasks``: the objectives' loaded tasks."""
    from evomerge.eval import load_task

    tasks = list(tasks)
    bound: list[BoundConstraint] = []
    for i, spec in enumerate(config.constraints):
        task_name, _, metric = spec.metric.rpartition("/")
        where = next((j for j, t in enumerate(tasks) if t.name == task_name), None)
        if where is None or metric not in _metric_names(tasks[where]):
            ref = _LOAD_AS.get((task_name, metric), task_name)
            try:
                task = load_task(ref, split=config.split, fitness=True, allow_test_split=config.allow_test_split)
            except EvomergeError as e:
                raise RunConfigError(
                    f"{config_path}: constraints[{i}] ({spec}): {e} A constraint's metric is "
                    f"task/metric, the task as `evomerge eval --task` names it."
                ) from None
            if task.name != task_name:
                raise RunConfigError(
                    f"{config_path}: constraints[{i}] ({spec}): task {ref!r} scores under the name "
                    f"{task.name!r}; write {task.name}/{metric}."
                )
            if where is None:
                tasks.append(task)
                where = len(tasks) - 1
            elif task.name == task_name and set(_metric_names(tasks[where])) <= set(_metric_names(task)):
                tasks[where] = task  # the same task, measuring more
        names = _metric_names(tasks[where])
        if metric not in names:
            raise RunConfigError(
                f"{config_path}: constraints[{i}]: task {task_name!r} has no metric {metric!r} (it "
                f"has {', '.join(names)}); write {task_name}/<one of them>."
            )
        bound.append(BoundConstraint(spec.metric, spec.kind, spec.bound,
                                     any_fidelity=tasks[where].size() is None))
    return tasks, bound


def _metric_names(task) -> list[str]:
    return [o.name for o in task.objectives()]


def violations(scores: dict[str, float], constraints: list[BoundConstraint], *,
               top: bool = True) -> dict[str, float]:
    """The judged constraints' violations, keyed by ``BoundConstraint.name`` (what the ledger
    records); below the top rung (``top`` False) only those that do not depend on fidelity."""
    return {c.name: c.violation(scores[c.key]) for c in constraints if top or c.any_fidelity}


def total_violation(scores: dict[str, float], constraints: list[BoundConstraint], *, top: bool = True) -> float:
    """The summed relative violation (0: feasible), for ranking infeasible trials."""
    return sum(max(0.0, c.told(scores[c.key])) for c in constraints if top or c.any_fidelity)


def feasible(scores: dict[str, float], constraints: list[BoundConstraint]) -> bool:
    """Whether top-fidelity ``scores`` meet every constraint."""
    return all(c.violation(scores[c.key]) == 0.0 for c in constraints)


def told_values(scores: dict[str, float], constraints: list[BoundConstraint]) -> tuple[float, ...]:
    """What the optimiser is told, one value per constraint (<= 0: met)."""
    return tuple(c.told(scores[c.key]) for c in constraints)


def describe_violations(scores: dict[str, float], constraints: list[BoundConstraint]) -> str:
    """The constraints ``scores`` miss and by how much, for logs and errors."""
    missed = [(c, c.violation(scores[c.key])) for c in constraints]
    return "; ".join(f"{c} missed by {v:.4g} (it is {scores[c.key]:.4g})" for c, v in missed if v > 0)
