"""Synchronous CMA-ES through ask/tell is pycma's ``fmin2`` with the same settings, point for point.

benchmarks/search_efficiency.py compares evomerge's CMA-ES with a mergekit-evolve-style
baseline that calls ``cma.fmin2(f, [0.5] * d, 0.25, {bounds: [0, 1], seed: seed + 1, popsize})``.
At equal space, seed and budget the two must evaluate the very same points (same start, step,
bounds handling, population, seeding and fitness direction), so any gap the benchmark shows
between them comes from the space (gene order, ranges) or the seed, not from the optimiser.
"""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.search.optimizers.cmaes import CMAES

TARGET = np.array([0.7, 0.55, 0.8, 0.45, 1.0, 0.05])  # one coordinate on each bound's side


def fitness(x) -> float:
    """Larger is better, like a mean exact match (a plateau-free bump)."""
    return float(np.exp(-np.sum((np.asarray(x) - TARGET) ** 2) / 0.3))


def fmin2_points(seed: int, budget: int, popsize: int) -> list[np.ndarray]:
    import cma

    points = []

    def objective(x) -> float:
        points.append(np.array(x, dtype=float))
        return -fitness(x)  # pycma minimises

    cma.fmin2(objective, [0.5] * len(TARGET), 0.25,
              {"bounds": [0, 1], "maxfevals": budget, "seed": seed + 1, "verbose": -9, "popsize": popsize})
    return points[:budget]  # fmin2 also scores the final mean, past the budget


def cmaes_points(seed: int, budget: int, popsize: int) -> list[np.ndarray]:
    opt = CMAES(len(TARGET), 1, seed, popsize=popsize)
    points = []
    while len(points) < budget:
        batch = []
        while (s := opt.ask()) is not None:
            batch.append(s)
        for s in reversed(batch):  # told in any order, as a pool would
            points.append(np.array(s.x, dtype=float))
            opt.tell(s.id, (fitness(s.x),))
    # the generation was told in reverse: put each one back in asked order to compare
    gens = [points[i:i + popsize][::-1] for i in range(0, len(points), popsize)]
    return [p for g in gens for p in g][:budget]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cmaes_evaluates_what_fmin2_evaluates(seed):
    a = fmin2_points(seed, 45, 9)
    b = cmaes_points(seed, 45, 9)
    assert len(a) == len(b) == 45
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"seed {seed}: evaluation {i} differs from fmin2's")
