"""The Pareto front of a run's objectives, read from its ledger.

Every objective of the run counts, whatever the optimiser scalarised: a recipe
is on the front if no other trial is at least as good on all objectives and
better on one. Hypervolume is measured from one reference point, the same for
``evomerge front`` and MLflow: per objective, the value declared in the run
config (``reference:``), else the worst value over the run's finished trials
(which compares fronts of one run, not fronts of different runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evomerge.search.controller import BoundObjective, fitness, load_run, unique_objectives
from evomerge.search.ledger import TrialRecord


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` (to maximise) that no other row dominates."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        others = np.delete(points, i, axis=0)
        dominated = np.any(np.all(others >= points[i], axis=1) & np.any(others > points[i], axis=1))
        keep[i] = not dominated
    return keep


def hypervolume(front: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by ``front`` (maximised) above ``reference``; points not strictly better
    than the reference on every objective add nothing."""
    from optuna._hypervolume import compute_hypervolume

    pts = front[np.all(front > reference, axis=1)] if len(front) else front
    if not len(pts):
        return 0.0
    # Optuna's routine minimises: flip signs so both conventions agree.
    return float(compute_hypervolume(-pts, -reference))


def reference_point(points: np.ndarray, objectives: list[BoundObjective]) -> np.ndarray:
    """The hypervolume reference in 'larger is better' form: each objective's declared
    ``reference``, else the worst of ``points`` in that column."""
    worst = points.min(axis=0)
    return np.array([o.sign * o.reference if o.reference is not None else worst[i]
                     for i, o in enumerate(objectives)], dtype=float)


def objective_points(scores: list[dict[str, float]], objectives: list[BoundObjective]) -> np.ndarray:
    """One row per trial, one column per objective, each turned to 'larger is better'."""
    return np.array([[o.sign * sc[o.key] for o in objectives] for sc in scores], dtype=float)


def run_front(run_dir: Path) -> tuple[list[BoundObjective], list[TrialRecord], np.ndarray, float | None]:
    _, objectives, trials = load_run(run_dir)
    unique = unique_objectives(objectives)
    points = objective_points([t.scores for t in trials], unique)
    mask = pareto_mask(points)
    front_trials = [t for t, m in zip(trials, mask, strict=True) if m]
    front = points[mask]
    hv = None
    if len(unique) > 1:
        hv = hypervolume(front, reference_point(points, unique))
    front_trials.sort(key=lambda t: -fitness(t.scores, objectives))
    return unique, front_trials, front, hv
