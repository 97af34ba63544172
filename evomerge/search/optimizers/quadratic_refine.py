"""Quadratic trust-region search, then adaptive coordinate steps around the incumbent.

The quadratic model (``quadratic``) finds the basin of a merge's optimum in few evaluations, but
near the optimum the score is a cusp (TIES switches entries whole), where a fitted quadratic
closes in slowly; adaptive coordinate steps (``local_refine``) need no model of the shape and
pin each gene down geometrically. Both work on one set of told points, in turns:

- Global phase: the quadratic alone, unchanged (warm starts, its Sobol start-up, model steps).
- Its trust radius falling below where it started (below its first radius, later below the one
  at the last hand-back) means its model has failed around the incumbent ``failure_tolerance``
  times in a row: the coordinate phase begins, every gene at ``refine_step``.
- Coordinate phase: every proposal is one gene of the incumbent (the best told point; feasible
  first, by Deb's rules) moved by that gene's step. The point goes through the quadratic's
  warm-start path, so its model fits every told point and its pending-point penalty sees steps
  still out. A step succeeds when it beats the point it stepped from (the incumbent when it was
  asked) by 1e-3 of the told values' range: ripples a hair's breadth high do not hold a step at
  its size. When every gene's step has failed both ways at ``refine_min_step`` (a local optimum
  to that precision, or a ripple the steps cannot leave), the quadratic takes over again.

Asks before tells move different genes (a gene with a step out is skipped; when every gene has
one out, the quadratic proposes), and tells may come in any order: each step is judged against
its own starting point. Single objective only (the steps follow one incumbent). Nothing reads a
clock and the only random draws are the quadratic's, so the seed and the order of asks and tells
give the same points: a replayed ledger retraces them.
"""

from __future__ import annotations

import math

import numpy as np

from evomerge.search.optimizers.base import Optimizer, Suggestion, register_optimizer
from evomerge.search.optimizers.local_refine import CoordinateSteps
from evomerge.search.optimizers.quadratic import Quadratic

_MARGIN = 1e-3  # a coordinate step succeeds when it beats the incumbent by this share of the values' range


@register_optimizer("quadratic_refine")
class QuadraticRefine(Optimizer):
    def __init__(self, dimension: int, n_objectives: int = 1, seed: int = 0, *, refine_step: float = 0.1,
                 refine_shrink: float = 0.4, refine_min_step: float = 1e-4,
                 **quadratic_options) -> None:
        # the quadratic's own options (n_initial, radius, ...) pass through
        super().__init__(dimension, n_objectives, seed)
        self.quadratic = Quadratic(dimension, n_objectives, seed, **quadratic_options)
        self.steps = CoordinateSteps(dimension, refine_step, shrink=refine_shrink, min_step=refine_min_step)
        self.local = False  # in the coordinate phase
        self.phases = 0  # coordinate phases begun (for the record)
        self._radius = self.quadratic.radius  # the coordinate phase begins when the quadratic's falls below
        self._lo, self._hi = math.inf, -math.inf  # range of the told values
        self._warm = 0  # warm-start points handed to the quadratic: start-up lasts longer by as many
        self._told = 0  # scored tells
        # id -> (the quadratic's id, the gene stepped or None, the point, the incumbent's key when asked)
        self._out: dict[int, tuple[int, int | None, np.ndarray, tuple[float, float] | None]] = {}
        self._best: tuple[float, float] | None = None  # incumbent's (violation, -value): smaller is better
        self._best_x: np.ndarray | None = None

    def expect_constraints(self, n: int) -> None:
        super().expect_constraints(n)
        self.quadratic.expect_constraints(n)

    def warm_start(self, points: list[np.ndarray]) -> None:
        self._warm += len(points)
        self.quadratic.warm_start(points)

    def ask(self) -> Suggestion:
        started = self._told >= self._warm + self.quadratic.n_initial and self._best_x is not None
        if started and not self.local and self.quadratic.radius < self._radius:
            self.local = True  # the model failed around the incumbent: refine it
            self.phases += 1
            self.steps.reset()
        gene = None
        if self.local:
            step = self.steps.propose(self._best_x)
            if step is not None:  # else every gene has a step out: the quadratic proposes
                gene, x = step
                self.quadratic.warm_start([x])  # its queue is empty after start-up: x comes next
        inner = self.quadratic.ask()
        sid = self._new_id()
        self._out[sid] = (inner.id, gene, inner.x.copy(), self._best)
        return Suggestion(sid, inner.x)

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        out = self._out.pop(id, None)
        if out is None:
            return
        inner, gene, x, centre = out
        self.quadratic.tell(inner, values, constraints)
        key = None
        if values is not None and all(math.isfinite(float(v)) for v in values):
            self._told += 1
            violation = float(np.maximum(np.asarray(constraints if constraints is not None else (), float), 0).sum())
            key = (violation, -float(values[0]))
            self._lo, self._hi = min(self._lo, -key[1]), max(self._hi, -key[1])
        improved = key is not None and (self._best is None or key < self._best)
        if gene is not None:
            self.steps.report(gene, key is not None and self._clearly_better(key, centre))
            if self.local and self.steps.converged:
                self.local = False  # refined as far as steps help: back to the model
                self._radius = self.quadratic.radius  # until it fails at a smaller scale than now
        if improved:
            self._best, self._best_x = key, x

    def _clearly_better(self, key: tuple[float, float], than: tuple[float, float]) -> bool:
        """Beats the incumbent by more than ``_MARGIN`` of the told values' range (or violates
        less): ripples a hair's breadth wide do not hold a step at its size."""
        return key[0] < than[0] or (key[0] == than[0] and -key[1] > -than[1] + _MARGIN * (self._hi - self._lo))
