"""The Pareto front of a run's objectives, read from its ledger.

Every objective of the run counts, whatever the optimiser scalarised: a recipe
is on the front if no other trial is at least as good on all objectives and
better on one. Hypervolume is measured against the worst value seen per
objective (so it compares fronts of the same run over time, not across runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evomerge.search.controller import BoundObjective, fitness, load_run
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
    """Volume dominated by ``front`` (maximised) above ``reference``."""
    from optuna._hypervolume import compute_hypervolume

    # Optuna's routine minimises: flip signs so both conventions agree.
    return float(compute_hypervolume(-front, -reference))


def run_front(run_dir: Path) -> tuple[list[BoundObjective], list[TrialRecord], np.ndarray, float | None]:
    _, objectives, trials = load_run(run_dir)
    # Objectives named twice (same task and metric) count once on the front.
    unique = list({o.key: o for o in objectives}.values())
    points = np.array([[o.sign * t.scores[o.key] for o in unique] for t in trials])
    mask = pareto_mask(points)
    front_trials = [t for t, m in zip(trials, mask, strict=True) if m]
    front = points[mask]
    hv = None
    if len(unique) > 1:
        hv = hypervolume(front, points.min(axis=0) - 1e-12)
    front_trials.sort(key=lambda t: -fitness(t.scores, objectives))
    return unique, front_trials, front, hv
