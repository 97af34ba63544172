"""Conformance suite: every registered optimiser obeys the ask/tell protocol."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.search.optimizers import OPTIMIZERS

TARGET = np.array([0.2, 0.7, 0.35, 0.9])


def fitness(x: np.ndarray) -> float:
    return -float(np.sum((x - TARGET) ** 2))


def run(name: str, budget: int, seed: int = 0, fail_every: int = 0) -> tuple[float, list[np.ndarray]]:
    opt = OPTIMIZERS.get(name)(len(TARGET), 1, seed)
    best, seen = -np.inf, []
    for n in range(budget):
        s = opt.ask()
        assert s is not None  # told at once, so nobody has to wait
        assert s.x.shape == TARGET.shape and np.all((s.x >= 0) & (s.x <= 1))
        seen.append(s.x)
        if fail_every and n % fail_every == 0:
            opt.tell(s.id, None)
            continue
        f = fitness(s.x)
        best = max(best, f)
        opt.tell(s.id, (f,))
    return best, seen


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_same_seed_same_trajectory_and_failures_are_survived(name):
    a = run(name, 24, seed=3, fail_every=5)[1]
    b = run(name, 24, seed=3, fail_every=5)[1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = run(name, 24, seed=4)[1]
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS.names() if n not in ("random", "nsga2")])
def test_beats_random_search_at_equal_budget(name):
    budget = 60
    assert run(name, budget)[0] > run("random", budget)[0]


def test_single_objective_optimisers_refuse_several_objectives():
    with pytest.raises(ValueError, match="scalarisation"):
        OPTIMIZERS.get("cmaes")(4, 2)
    opt = OPTIMIZERS.get("nsga2")(4, 2, 0)
    s = opt.ask()
    opt.tell(s.id, (1.0, -2.0))


def test_cmaes_waits_for_its_generation():
    opt = OPTIMIZERS.get("cmaes")(4, 1, 0, popsize=4)
    first = [opt.ask() for _ in range(4)]
    assert opt.ask() is None
    for s in reversed(first):  # any order
        opt.tell(s.id, (fitness(s.x),))
    assert opt.ask() is not None


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_warm_start_points_come_first(name):
    opt = OPTIMIZERS.get(name)(4, 1, 0)
    points = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.9, 0.8, 0.7, 0.6])]
    opt.warm_start(points)
    got = [opt.ask() for _ in range(2)]
    assert all(np.allclose(s.x, p) for s, p in zip(got, points, strict=True))
    for s in got:
        opt.tell(s.id, (fitness(s.x),))
    assert opt.ask() is not None


@pytest.mark.parametrize("strategy", ["ipop", "bipop"])
def test_cmaes_restarts_when_the_search_stalls(strategy):
    # A flat fitness makes pycma's stopping criteria fire within a few generations.
    opt = OPTIMIZERS.get("cmaes")(4, 1, 0, popsize=4, restarts=2, restart_strategy=strategy)
    first_popsize = opt.es.popsize
    for _ in range(60):
        batch = []
        while (s := opt.ask()) is not None:
            batch.append(s)
        for s in batch:
            opt.tell(s.id, (0.0,))
        if opt.restarts_left == 0:
            break
    assert opt.restarts_done == 2
    if strategy == "ipop":
        assert opt.es.popsize == 4 * first_popsize  # doubled at each restart
    with pytest.raises(ValueError, match="restart_strategy"):
        OPTIMIZERS.get("cmaes")(4, 1, 0, restart_strategy="nope")
