"""Uniform random search: the baseline every other optimiser must beat.

It learns nothing from what it is told, so constraints change nothing in what it
proposes (neither a penalty nor a rejection would: a rejected point is only
replaced by another blind draw); a constrained run's best, front and export
still count feasible trials only.
"""

from __future__ import annotations

import numpy as np

from evomerge.search.optimizers.base import Optimizer, Suggestion, register_optimizer


@register_optimizer("random")
class RandomSearch(Optimizer):
    max_objectives = None

    def __init__(self, dimension: int, n_objectives: int = 1, seed: int = 0) -> None:
        super().__init__(dimension, n_objectives, seed)
        self._rng = np.random.default_rng(seed)
        self._warm: list[np.ndarray] = []

    def warm_start(self, points: list[np.ndarray]) -> None:
        self._warm.extend(np.asarray(p, dtype=float) for p in points)

    def ask(self) -> Suggestion:
        x = self._warm.pop(0) if self._warm else self._rng.random(self.dimension)
        return Suggestion(self._new_id(), x)

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        pass
