"""The quadratic-model optimiser: search quality, pending points, replay, constraints.

The ask/tell protocol is checked by the optimiser suite (tests/testing/test_suite_optimizers.py).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from optimizer_helpers import run as run_optimizer

from evomerge.search.optimizers import OPTIMIZERS
from evomerge.search.pareto import hypervolume, pareto_mask
from evomerge.testing.optimizers import fitness, two_objectives

OPTIMUM = np.array([0.3, 0.6, 0.45, 0.8])


def _concave() -> np.ndarray:
    """A rotated, badly scaled negative-definite Hessian (condition number 30)."""
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(4, 4)))
    return q @ np.diag([1.0, 3.0, 10.0, 30.0]) @ q.T


A = _concave()


def concave(x: np.ndarray) -> float:
    e = np.asarray(x) - OPTIMUM
    return -float(e @ A @ e)


run = functools.partial(run_optimizer, dimension=len(OPTIMUM))  # dimension= overrides it


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beats_random_search_at_equal_budget(seed):
    best = max(v[0] for _, v in run("quadratic", fitness, 60, seed))
    assert best > max(v[0] for _, v in run("random", fitness, 60, seed))
    assert best > -1e-6  # the suite's sphere is a quadratic: the model is exact


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_the_optimum_of_a_rotated_concave_quadratic(seed):
    trials = run("quadratic", concave, 50, seed)
    x, (value,) = max(trials, key=lambda t: t[1][0])
    assert value > -1e-3
    assert np.max(np.abs(x - OPTIMUM)) < 1e-2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_objectives_cover_more_hypervolume_than_random(seed):
    def volume(trials) -> float:
        points = np.array([v for _, v in trials])
        return hypervolume(points[pareto_mask(points)], np.array([-2.5, -2.5]))

    ours = volume(run("quadratic", two_objectives, 60, seed, n_objectives=2))
    assert ours > volume(run("random", two_objectives, 60, seed, n_objectives=2))
    assert ours > 5.9  # the whole front dominates 6.25 - 1.25^2 / 6 = 5.99


def test_pending_suggestions_are_distinct():
    opt = OPTIMIZERS.get("quadratic")(4, 1, 0)
    for _ in range(12):  # past the start-up design: the next asks come from the model
        s = opt.ask()
        opt.tell(s.id, (fitness(s.x),))
    out = [opt.ask() for _ in range(8)]  # asynchronous executors ask before any tell
    assert all(s is not None for s in out)
    xs = np.array([s.x for s in out])
    gaps = np.max(np.abs(xs[:, None] - xs[None]), axis=2)[np.triu_indices(len(xs), 1)]
    assert gaps.min() > 0.05 * opt.radius
    for s in out:
        opt.tell(s.id, (fitness(s.x),))
    assert opt.ask() is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_asks_in_batches_still_find_the_optimum(seed):
    # four asks before any tell, as an executor with four slots does: the pending points are
    # penalised in the model, so the batch spreads instead of crowding the same point
    opt = OPTIMIZERS.get("quadratic")(4, 1, seed)
    best = -np.inf
    for _ in range(15):
        batch = [opt.ask() for _ in range(4)]
        for s in batch:
            best = max(best, concave(s.x))
            opt.tell(s.id, (concave(s.x),))
    assert best > -1e-3


def _trajectory(seed: int, order: list[int]) -> list[np.ndarray]:
    """Batches of asks told in ``order`` (a permutation of the batch), with failures and
    constraints: the points proposed."""
    opt = OPTIMIZERS.get("quadratic")(4, 2, seed)
    opt.expect_constraints(1)
    seen = []
    for _ in range(8):
        batch = [opt.ask() for _ in order]
        seen += [s.x.copy() for s in batch]
        for i in order:
            s = batch[i]
            if s.id % 7 == 3:
                opt.tell(s.id, None)
            else:
                opt.tell(s.id, two_objectives(s.x), constraints=(float(s.x[0]) - 0.7,))
    return seen


def test_the_same_asks_and_tells_give_the_same_trajectory():
    a, b = _trajectory(5, [2, 0, 1]), _trajectory(5, [2, 0, 1])
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = _trajectory(5, [0, 1, 2])  # told in another order: the model sees other data at each ask
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_failed_points_are_not_proposed_again_and_the_search_goes_on():
    opt = OPTIMIZERS.get("quadratic")(4, 1, 0)
    seen = []
    for _ in range(60):
        s = opt.ask()
        seen.append(s.x.copy())
        opt.tell(s.id, None if s.x[1] > 0.65 else (fitness(s.x),))  # the optimum's side fails
    xs = np.array(seen)
    gaps = np.max(np.abs(xs[:, None] - xs[None]), axis=2)[np.triu_indices(len(xs), 1)]
    assert gaps.min() > 0
    scores = [fitness(x) if x[1] <= 0.65 else -np.inf for x in xs]
    assert max(scores) > max(scores[:10]) + 0.05  # better than the start-up design's best


def test_constraints_keep_the_best_feasible_and_near_the_boundary():
    # maximise the sphere around TARGET (x0 = 0.2) subject to x0 >= 0.5: the optimum is on x0 = 0.5
    opt = OPTIMIZERS.get("quadratic")(4, 1, 1)
    opt.expect_constraints(1)
    best = -np.inf
    for _ in range(60):
        s = opt.ask()
        c = 0.5 - float(s.x[0])
        opt.tell(s.id, (fitness(s.x),), constraints=(c,))
        if c <= 0:
            best = max(best, fitness(s.x))
    assert best > -0.09 - 1e-3  # the constrained optimum: -(0.5 - 0.2)^2 = -0.09


def test_options_are_checked():
    cls = OPTIMIZERS.get("quadratic")
    with pytest.raises(ValueError, match="radius"):
        cls(4, 1, 0, radius=0.0)
    with pytest.raises(ValueError, match="explore_every"):
        cls(4, 1, 0, explore_every=-1)
    opt = cls(4, 1, 0, n_initial=3, explore_every=0)
    assert opt.n_initial == 3
