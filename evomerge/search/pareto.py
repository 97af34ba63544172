"""Pareto dominance, ranks and hypervolume: the one definition every part of a search uses.

Points are rows of objective values turned to "larger is better" (minimised
objectives sign-flipped). ``evomerge front``, successive halving's promotion
and the MLflow tracker all call these functions, and the hypervolume of a run
is always measured from ``reference_point``: each objective's declared
``reference`` (run config), else its worst value over the points given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether ``a`` dominates ``b`` (broadcasts): at least as good on every objective and better
    on one. Equal points do not dominate each other."""
    return np.all(a >= b, axis=-1) & np.any(a > b, axis=-1)


def domination_matrix(points: np.ndarray) -> np.ndarray:
    """``D[i, j]``: row i dominates row j (one n x n x m comparison instead of n Python steps)."""
    return dominates(points[:, None, :], points[None, :, :])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` that no other row dominates."""
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return ~domination_matrix(points).any(axis=0)


def pareto_rank(points: np.ndarray) -> list[int]:
    """0 for the non-dominated, 1 for those only the first front dominates, and so on."""
    points = np.asarray(points, dtype=float)
    ranks = [0] * len(points)
    if len(points) == 0:
        return ranks
    dominated_by = domination_matrix(points)
    remaining = np.arange(len(points))
    level = 0
    while len(remaining):
        front = ~dominated_by[np.ix_(remaining, remaining)].any(axis=0)
        for i in remaining[front]:
            ranks[int(i)] = level
        remaining = remaining[~front]
        level += 1
    return ranks


def objective_points(scores: Sequence[dict[str, float]], objectives) -> np.ndarray:
    """One row per scored trial, one column per objective (``.key``, ``.sign``), each turned to
    'larger is better'."""
    return np.array([[o.sign * sc[o.key] for o in objectives] for sc in scores], dtype=float).reshape(
        len(scores), len(objectives))


def reference_point(points: np.ndarray, objectives) -> np.ndarray:
    """The hypervolume reference in 'larger is better' form: each objective's declared
    ``reference`` (in its own units), else the worst of ``points`` in that column."""
    worst = np.asarray(points, dtype=float).min(axis=0)
    return np.array([o.sign * o.reference if o.reference is not None else worst[i]
                     for i, o in enumerate(objectives)], dtype=float)


def hypervolume(front: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by ``front`` above ``reference``; points not strictly better than the
    reference on every objective add nothing."""
    from optuna._hypervolume import compute_hypervolume

    front = np.asarray(front, dtype=float)
    pts = front[np.all(front > reference, axis=1)] if len(front) else front
    if not len(pts):
        return 0.0
    # Optuna's routine minimises: flip signs so both conventions agree.
    return float(compute_hypervolume(-pts, -np.asarray(reference, dtype=float)))


def run_hypervolume(points: np.ndarray, objectives) -> float:
    """The hypervolume of the front of ``points`` from the run's reference point."""
    return hypervolume(points[pareto_mask(points)], reference_point(points, objectives))
