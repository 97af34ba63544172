"""The Pareto front of a run's objectives, read from its ledger (``evomerge front``).

Every objective of the run counts, whatever the optimiser scalarised: a trial
is on the front if no other trial is at least as good on all objectives and
better on one (``pareto``). The hypervolume is the one MLflow reports: from the
run's reference point (each objective's declared ``reference:``, else its worst
value over the run's finished trials). A run with ``constraints:`` has a front of
its feasible trials only: an infeasible trial neither shows on it nor dominates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evomerge.search.constraints import feasible
from evomerge.search.ledgers import EvaluationRecord
from evomerge.search.objectives import BoundObjective, fitness, unique_objectives
from evomerge.search.pareto import objective_points, pareto_mask, run_hypervolume
from evomerge.search.rundir import load_run


def run_front(run_dir: Path) -> tuple[list[BoundObjective], list[EvaluationRecord], np.ndarray, float | None]:
    """(objectives, front trials' top-level evaluations best first, their points, hypervolume);
    the front of the feasible trials (empty when none is)."""
    _, objectives, evaluations, constraints = load_run(run_dir)
    unique = unique_objectives(objectives)
    evaluations = [e for e in evaluations if feasible(e.scores, constraints)]
    if not evaluations:
        return unique, [], np.empty((0, len(unique))), None
    points = objective_points([e.scores for e in evaluations], unique)
    mask = pareto_mask(points)
    front = [e for e, m in zip(evaluations, mask, strict=True) if m]
    hv = run_hypervolume(points, unique) if len(unique) > 1 else None
    front.sort(key=lambda e: -fitness(e.scores, objectives))
    return unique, front, points[mask], hv
