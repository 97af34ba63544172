"""Conformance suite for optimisers: the ask/tell protocol of ``evomerge.search.optimizers``.

Checks, for each optimiser: it is an ``Optimizer`` with a sane ``max_objectives``
and refuses an empty space; every suggestion is a point of the unit cube
``[0, 1]^d`` with a new id; told at once, it never makes the caller wait; it may
hold back (``ask() -> None``) only while suggestions are out, and goes on once they
are told in any order; failed trials (``tell(id, None)``) are survived; the same
seed gives the same trajectory and another seed another one; multi-objective
optimisers (``max_objectives = None``) take several values, single-objective ones
refuse more objectives than they take; warm-start points, if it takes them, come
first and unchanged.

Runs are short (a dozen suggestions past a model-based optimiser's start-up
phase at most), so the suite is about the protocol, not about search quality.

It runs on every name in ``OPTIMIZERS`` by default. To run it on yours::

    # test_my_optimizer.py
    import pytest
    from evomerge.testing.optimizers import OptimizerSuite

    @pytest.mark.parametrize("optimizer_name", ["my_optimizer"])
    class TestMyOptimizer(OptimizerSuite):
        pass

Override the ``optimizer_options`` fixture to build it with options
(``optimizer: {options: ...}`` in a run config).
"""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.search.optimizers.base import OPTIMIZERS, Optimizer, Suggestion

TARGET = np.array([0.2, 0.7, 0.35, 0.9])
DIMENSION = len(TARGET)


def fitness(x: np.ndarray) -> float:
    """A smooth single objective, largest (0) at ``TARGET``."""
    return -float(np.sum((np.asarray(x) - TARGET) ** 2))


def two_objectives(x: np.ndarray) -> tuple[float, float]:
    """Two conflicting objectives to maximise."""
    x = np.asarray(x)
    return -float(np.sum((x - TARGET) ** 2)), -float(np.sum((x - (1 - TARGET)) ** 2))


class OptimizerSuite:
    """The ask/tell contract; ``optimizer_name`` is the registered name under test."""

    #: suggestions per run in the trajectory checks (past TPE's and GP's start-up phase)
    budget = 14

    @pytest.fixture(params=OPTIMIZERS.names())
    def optimizer_name(self, request) -> str:
        return request.param

    @pytest.fixture
    def optimizer_options(self) -> dict:
        """Keyword options the optimiser is built with."""
        return {}

    @pytest.fixture
    def make(self, optimizer_name, optimizer_options):
        """``make(dimension, n_objectives, seed)``: a new optimiser under test."""

        def make(dimension: int = DIMENSION, n_objectives: int = 1, seed: int = 0) -> Optimizer:
            return OPTIMIZERS.get(optimizer_name)(dimension, n_objectives, seed, **optimizer_options)

        return make

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def check(s: Suggestion | None, dimension: int = DIMENSION) -> Suggestion:
        assert s is not None, "ask() returned None with no suggestion outstanding (nobody to wait for)"
        assert isinstance(s, Suggestion)
        x = np.asarray(s.x)
        assert x.shape == (dimension,), f"a point of shape {x.shape} in a {dimension}-gene space"
        assert np.all(np.isfinite(x)) and np.all((x >= 0) & (x <= 1)), f"{x} is outside the unit cube"
        return s

    def run(self, opt: Optimizer, budget: int, fail_every: int = 0, objectives=fitness) -> list[np.ndarray]:
        """Ask and tell at once, ``budget`` times; every ``fail_every``-th trial fails."""
        seen, ids = [], set()
        for n in range(budget):
            s = self.check(opt.ask(), opt.dimension)
            assert s.id not in ids, f"suggestion id {s.id} given twice"
            ids.add(s.id)
            seen.append(np.array(s.x, dtype=float))
            if fail_every and n % fail_every == 0:
                opt.tell(s.id, None)
            else:
                value = objectives(s.x)
                opt.tell(s.id, value if isinstance(value, tuple) else (value,))
        return seen

    # -- the contract ------------------------------------------------------------------

    def test_is_a_registered_optimizer(self, optimizer_name, optimizer_options):
        cls = OPTIMIZERS.get(optimizer_name)
        assert isinstance(cls, type) and issubclass(cls, Optimizer)
        assert cls.max_objectives is None or (isinstance(cls.max_objectives, int) and cls.max_objectives >= 1)
        with pytest.raises(ValueError):
            cls(0, 1, 0, **optimizer_options)

    @pytest.mark.parametrize("dimension", [1, 7], ids=lambda d: f"{d}-genes")
    def test_suggestions_are_points_of_the_unit_cube(self, make, dimension):
        opt = make(dimension, 1, 0)
        assert (opt.dimension, opt.n_objectives) == (dimension, 1)
        xs = self.run(opt, 12, objectives=lambda x: float(np.sum(x)))
        assert len({x.tobytes() for x in xs}) > 1, "every suggestion was the same point"

    def test_same_seed_same_trajectory_and_failures_are_survived(self, make):
        a = self.run(make(seed=3), self.budget, fail_every=5)
        b = self.run(make(seed=3), self.budget, fail_every=5)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), "same seed, another trajectory"
        c = self.run(make(seed=4), 4)
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False)), "another seed, same points"

    def test_outstanding_suggestions_are_told_in_any_order(self, make):
        opt = make(seed=1)
        out = [self.check(opt.ask())]  # nothing outstanding yet: it must propose
        while len(out) < 12 and (s := opt.ask()) is not None:
            out.append(self.check(s))
        assert len({s.id for s in out}) == len(out), "suggestion ids repeat"
        for i, s in enumerate(reversed(out)):
            opt.tell(s.id, None if i == 1 else (fitness(s.x),))
        self.run(opt, 2)  # all told: it goes on

    def test_constraints_are_taken_and_the_trajectory_stays_seeded(self, make):
        """A constrained run tells each scored trial's constraint values (<= 0: met)."""

        def trajectory() -> list[np.ndarray]:
            opt = make(seed=2)
            opt.expect_constraints(2)
            seen = []
            for n in range(self.budget):
                s = self.check(opt.ask())
                seen.append(np.array(s.x, dtype=float))
                if n % 6 == 5:
                    opt.tell(s.id, None)
                else:
                    opt.tell(s.id, (fitness(s.x),), constraints=(float(s.x[0]) - 0.5, -1.0))
            return seen

        a, b = trajectory(), trajectory()
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), "same seed, another trajectory"

    def test_objective_counts(self, optimizer_name, make, optimizer_options):
        cls = OPTIMIZERS.get(optimizer_name)
        if cls.max_objectives is not None:
            with pytest.raises(ValueError):
                make(n_objectives=cls.max_objectives + 1)
            if cls.max_objectives < 2:
                return
        opt = make(n_objectives=2, seed=0)
        assert opt.n_objectives == 2
        self.run(opt, 12, fail_every=4, objectives=two_objectives)

    def test_warm_start_points_come_first(self, make):
        opt = make(seed=0)
        points = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.9, 0.8, 0.7, 0.6])]
        try:
            opt.warm_start(points)
        except NotImplementedError:
            pytest.skip("this optimiser does not take warm starts")
        got = [self.check(opt.ask()) for _ in points]
        for s, p in zip(got, points, strict=True):
            np.testing.assert_allclose(s.x, p, err_msg="a warm-start point was not proposed first, unchanged")
        for s in got:
            opt.tell(s.id, (fitness(s.x),))
        self.run(opt, 3)
