"""CMA-ES (pycma) in the unit cube, generation by generation.

Suggestions of one generation can be evaluated in any order and in parallel;
the generation is passed to CMA-ES once all of it has been told. Failed trials
get a fitness worse than any seen, so the search moves away from them.
"""

from __future__ import annotations

import math

import numpy as np

from evomerge.search.optimizers.base import Optimizer, Suggestion, register_optimizer


@register_optimizer("cmaes")
class CMAES(Optimizer):
    def __init__(
        self,
        dimension: int,
        n_objectives: int = 1,
        seed: int = 0,
        *,
        sigma0: float = 0.25,
        popsize: int | None = None,
        x0: list[float] | None = None,
    ) -> None:
        super().__init__(dimension, n_objectives, seed)
        import cma

        opts = {"bounds": [0.0, 1.0], "seed": seed + 1, "verbose": -9}  # pycma: seed 0 = clock
        if popsize:
            opts["popsize"] = popsize
        start = x0 if x0 is not None else [0.5] * dimension
        self.es = cma.CMAEvolutionStrategy(start, sigma0, opts)
        self._pending: list[np.ndarray] = []  # the generation being handed out
        self._ids: dict[int, int] = {}  # suggestion id -> index in the generation
        self._told: dict[int, float | None] = {}
        self._given = 0

    def ask(self) -> Suggestion | None:
        if not self._pending:
            self._pending = [np.asarray(x, dtype=float) for x in self.es.ask()]
            self._ids, self._told, self._given = {}, {}, 0
        if self._given == len(self._pending):
            return None  # wait for the rest of this generation
        i = self._given
        self._given += 1
        sid = self._new_id()
        self._ids[sid] = i
        return Suggestion(sid, self._pending[i].copy())

    def tell(self, id: int, values: tuple[float, ...] | None) -> None:
        if id not in self._ids:
            return  # from an earlier generation: already accounted for
        self._told[self._ids[id]] = None if values is None else float(values[0])
        if len(self._told) < len(self._pending):
            return
        seen = [v for v in self._told.values() if v is not None and math.isfinite(v)]
        worst = min(seen) - 1.0 if seen else 0.0
        fitness = [
            -(v if v is not None and math.isfinite(v) else worst)  # pycma minimises
            for v in (self._told[i] for i in range(len(self._pending)))
        ]
        self.es.tell(self._pending, fitness)
        self._pending = []
