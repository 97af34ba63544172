"""A run's objectives: bound to their tasks, scalarised, and what "the best trial" means.

Each objective names a task's metric (``task/metric``, the key in the ledger's
scores), a direction, and its weight and scale in the declared scalarisation
(a weighted sum of scaled, sign-corrected values: larger is better). Whether
the optimiser is told that one number or every objective (a Pareto search)
follows from the run config and the optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from evomerge.config.run import RunConfig, RunConfigError
from evomerge.errors import EvomergeError


@dataclass(frozen=True)
class BoundObjective:
    key: str  # "task/metric", the name in the ledger's scores
    sign: float  # +1 maximise, -1 minimise
    weight: float
    scale: float = 1.0
    reference: float | None = None  # hypervolume reference, in the objective's own units


def bind_objectives(config: RunConfig, config_path: Path):
    """The run's tasks (each loaded once, however many of its metrics count) and objectives."""
    from evomerge.eval import load_task
    from evomerge.eval.task import inline_ref

    tasks: dict[str, object] = {}
    objectives = []
    for i, spec in enumerate(config.objectives):
        ref = inline_ref(spec.task, spec.task_options, Path(config_path).resolve().parent)
        try:
            task = tasks.get(ref) or load_task(
                ref, split=config.split, fitness=True, allow_test_split=config.allow_test_split
            )
        except EvomergeError as e:  # name the run config and the field that led there
            raise RunConfigError(f"{config_path}: objectives[{i}].task: {e}") from None
        twin = next((r for r, t in tasks.items() if t.name == task.name and r != ref), None)
        if twin is not None:
            raise RunConfigError(
                f"{config_path}: objectives[{i}]: a second task named {task.name!r} with other options; "
                f"give one of them its own `name:` (the ledger keys scores by task name)."
            )
        tasks[ref] = task
        names = {o.name: o for o in task.objectives()}
        metric = spec.metric or next(iter(names))
        if metric not in names:
            raise RunConfigError(
                f"{config_path}: objectives: task {spec.task!r} has no objective {metric!r} "
                f"(it has {', '.join(names)})."
            )
        objectives.append(BoundObjective(f"{task.name}/{metric}", names[metric].sign, spec.weight,
                                         spec.scale, spec.reference))
    return list(tasks.values()), objectives


def unique_objectives(objectives: list[BoundObjective]) -> list[BoundObjective]:
    """Objectives named twice (same task and metric) count once on a front; a reference
    declared on any of them counts."""
    out: dict[str, BoundObjective] = {}
    for o in objectives:
        first = out.setdefault(o.key, o)
        if first.reference is None and o.reference is not None:
            out[o.key] = replace(first, reference=o.reference)
    return list(out.values())


def pareto_told(config: RunConfig, optimizer_cls, objectives: list[BoundObjective]) -> bool:
    """Whether the optimiser is told every objective (else one weighted sum)."""
    n = len(unique_objectives(objectives))
    if config.scalarization == "weighted_sum" or n == 1:
        return False
    supports = optimizer_cls.max_objectives is None
    if config.scalarization == "pareto" and not supports:
        raise RunConfigError(
            f"scalarization: pareto needs a multi-objective optimiser (nsga2, tpe, gp, random); "
            f"{config.optimizer.name} optimises one value: use scalarization: weighted_sum."
        )
    return supports


def fitness(scores: dict[str, float], objectives: list[BoundObjective]) -> float:
    """The declared scalarisation: a weighted sum of scaled objectives, 'larger is better'."""
    total = sum(o.weight for o in objectives)
    return sum(o.weight * o.sign * scores[o.key] / o.scale for o in objectives) / total


def best_evaluation(evaluations: list, objectives: list[BoundObjective], constraints=()):
    """The fittest of top-level evaluations (one per trial) that meet every constraint (a
    ``BoundConstraint``); on ties, the earliest trial. None when none is feasible."""
    from evomerge.search.constraints import feasible

    ok = [e for e in evaluations if feasible(e.scores, list(constraints))]
    return max(ok, key=lambda e: (fitness(e.scores, objectives), -e.trial)) if ok else None
