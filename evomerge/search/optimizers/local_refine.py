"""Adaptive coordinate steps: the local search that pins an incumbent down to fine precision.

Why: near a merge's optimum the score is a cusp, not a bowl. TIES's trimming and sign election
switch entries whole as a gene moves, so the score falls like the square root of a gene's error
(benchmarks/README.md, known_optimum: 0.97 needs every gene to ~3e-4 of the unit cube). A
quadratic fitted there averages both sides of the cusp and closes in slowly. A coordinate step
needs no model of the shape: it asks whether moving one gene by its step beats the incumbent.

Each gene keeps its own step and direction: a step that beats the incumbent keeps both (the
optimum may lie further that way); one that does not turns round, and once both directions have
failed at the same step it shrinks by ``shrink``: along that gene the optimum lies within a step
of the incumbent. Steps never grow: doubling after a success overshoots a cusp and costs two
failures to come back (known_optimum, 6 genes, seeds 0-4: 0.97 first reached after 121-141
evaluations with doubling, 106-130 without). A gene whose step has failed both ways at
``min_step`` rests: ``converged`` says when every gene does, and ``reset`` starts them all again.

Genes are visited largest step first (the least resolved gene; ties in turn, from where the last
proposal left off): a gene already pinned down costs little while another still moves
(known_optimum, 6 genes, seeds 0-4: 0.97 after 106-130 evaluations; 106-187 in turn). Genes with
a step out are skipped, so proposals made before any is told move different genes and differ
from each other.

This module only keeps the steps; its driver (``quadratic_refine``) asks it for proposals around
its incumbent and reports whether each beat it. Nothing here draws random numbers: the proposals
follow from the order of calls alone.
"""

from __future__ import annotations

import numpy as np


class CoordinateSteps:
    """Per-gene steps and directions of an adaptive coordinate search in the unit cube."""

    def __init__(self, dimension: int, step: float = 0.1, *, shrink: float = 0.4, min_step: float = 1e-4) -> None:
        if not 0 < min_step <= step <= 1:
            raise ValueError(f"need 0 < min_step <= step <= 1, not min_step {min_step}, step {step}")
        if not 0 < shrink < 1:
            raise ValueError(f"need 0 < shrink < 1, not {shrink}")
        self.dimension, self.first_step, self.shrink, self.min_step = dimension, step, shrink, min_step
        self.steps = np.full(dimension, float(step))
        self.signs = np.ones(dimension)
        self._failed_sides = np.zeros(dimension, dtype=int)  # directions that failed at the current step
        self._floored = np.zeros(dimension, dtype=bool)  # failed both ways at min_step since its last success
        self._cursor = 0
        self.busy: set[int] = set()  # genes with a step out

    def reset(self) -> None:
        """Every gene back to the first step (a new region to refine)."""
        self.steps[:] = self.first_step
        self._failed_sides[:] = 0
        self._floored[:] = False

    @property
    def converged(self) -> bool:
        """Every gene has failed both ways at ``min_step``: no step helps any more."""
        return bool(self._floored.all())

    def propose(self, centre: np.ndarray) -> tuple[int, np.ndarray] | None:
        """The gene to move next and the point one step along it from ``centre`` (None: every
        gene has a step out)."""
        in_turn = [(self._cursor + k) % self.dimension for k in range(self.dimension)]
        for gene in sorted(in_turn, key=lambda g: -self.steps[g]):  # stable: ties stay in turn
            if gene in self.busy or self._floored[gene]:
                continue
            x = self._moved(centre, gene)
            self._cursor = (gene + 1) % self.dimension
            self.busy.add(gene)
            return gene, x
        return None

    def _moved(self, centre: np.ndarray, gene: int) -> np.ndarray:
        x = centre.copy()
        for _ in range(3):  # at a face of the cube the step turns round (and may shrink)
            target = float(np.clip(centre[gene] + self.signs[gene] * self.steps[gene], 0.0, 1.0))
            if abs(target - centre[gene]) > 0.5 * self.steps[gene]:
                break
            self._fail(gene)
        x[gene] = target
        return x

    def report(self, gene: int, improved: bool) -> None:
        """Whether the step along ``gene`` beat the incumbent (a failed evaluation did not)."""
        self.busy.discard(gene)
        if improved:
            self._failed_sides[gene] = 0
            self._floored[gene] = False
        else:
            self._fail(gene)

    def _fail(self, gene: int) -> None:
        self.signs[gene] = -self.signs[gene]
        self._failed_sides[gene] += 1
        if self._failed_sides[gene] >= 2:
            self._failed_sides[gene] = 0
            self._floored[gene] |= self.steps[gene] <= self.min_step
            self.steps[gene] = max(self.min_step, self.steps[gene] * self.shrink)
