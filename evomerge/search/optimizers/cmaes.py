"""CMA-ES (pycma) in the unit cube, with restarts, synchronous or asynchronous.

Synchronous (``asynchronous: false``, the default): a whole generation is handed
out, evaluated in any order and in parallel, and passed to CMA-ES once all of it
has been told; ``ask`` returns None while the rest of the generation is out, so
slots can idle at the generation barrier, but the trials do not depend on the
order in which evaluations complete (any executor gives the same trials).

Asynchronous (``asynchronous: true``): ``ask`` always answers, drawing one new
point from the current distribution; results are buffered as they arrive, and
every ``popsize`` of them update the distribution (pycma takes tells of points
drawn from an earlier distribution). No slot waits for a generation; the trials
then depend on completion order. Failed trials get a fitness worse than any
seen, so the search moves away from them.

When pycma's stopping criteria fire (the distribution has collapsed or the
fitness has stalled) and ``restarts`` remain, a new strategy starts from a
random point: IPOP doubles the population each time; BIPOP alternates such
large-population runs with small-population, small-step local runs.

Constraints are a penalty (``penalised``): a trial that misses one is told the
worst value among the trials of its update (generation, or asynchronous batch)
minus its summed relative violation (the positive constraint values). So every
infeasible trial ranks below every feasible one, infeasible trials rank by how
far they miss (Deb's feasibility rules, in the form of a fitness CMA-ES can
rank), and failed trials rank below them all. pycma uses only the ranks, so
the penalty's scale does not matter.
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
        restarts: int = 0,
        restart_strategy: str = "ipop",
        asynchronous: bool = False,
    ) -> None:
        super().__init__(dimension, n_objectives, seed)
        if restart_strategy not in ("ipop", "bipop"):
            raise ValueError(f"restart_strategy must be ipop or bipop, not {restart_strategy!r}")
        if not 0 < sigma0 <= 1:
            raise ValueError(f"sigma0 must be in (0, 1] (the cube's width is 1), not {sigma0}")
        self.sigma0 = sigma0
        self.restarts_left = restarts
        self.restart_strategy = restart_strategy
        self.restarts_done = 0
        self._rng = np.random.default_rng(seed + 7919)
        self._default_popsize = popsize or 4 + int(3 * math.log(dimension))
        self._large_popsize = self._default_popsize
        # pycma needs at least two dimensions: a one-gene space gets a second, ignored coordinate.
        self._inner = max(2, dimension)
        start = list(x0) if x0 is not None else [0.5] * dimension
        self.es = self._strategy(start + [0.5] * (self._inner - dimension), sigma0, self._default_popsize)
        self._pending: list[np.ndarray] = []  # the generation being handed out
        self._ids: dict[int, int] = {}  # suggestion id -> index in the generation
        self._told: dict[int, tuple[float | None, float]] = {}  # index -> (value, violation)
        self._given = 0
        self.asynchronous = asynchronous
        self._out: dict[int, np.ndarray] = {}  # asynchronous: suggestion id -> its point
        self._buffer: list[tuple[np.ndarray, float | None, float]] = []  # asynchronous: told, not yet used

    def _strategy(self, x0, sigma0: float, popsize: int):
        import cma

        seed = self.seed + 1 + 1000 * self.restarts_done  # pycma: seed 0 = clock
        opts = {"bounds": [0.0, 1.0], "seed": seed, "verbose": -9, "popsize": popsize}
        return cma.CMAEvolutionStrategy(list(x0), sigma0, opts)

    def _restart(self) -> None:
        self.restarts_left -= 1
        self.restarts_done += 1
        x0 = self._rng.random(self._inner)
        if self.restart_strategy == "ipop" or self.restarts_done % 2 == 1:
            self._large_popsize *= 2
            self.es = self._strategy(x0, self.sigma0, self._large_popsize)
        else:  # BIPOP's local regime: a smaller population and step, drawn at random
            u = self._rng.random()
            pop = int(self._default_popsize * (0.5 * self._large_popsize / self._default_popsize) ** (u * u))
            self.es = self._strategy(x0, self.sigma0 * 10 ** (-2 * u), max(pop, self._default_popsize))

    def warm_start(self, points: list[np.ndarray]) -> None:
        # pycma puts injected solutions, unaltered, at the head of the next generations.
        pad = [0.5] * (self._inner - self.dimension)
        self.es.inject([np.concatenate([np.clip(np.asarray(p, dtype=float), 0.0, 1.0), pad]) for p in points],
                       force=True)

    def ask(self) -> Suggestion | None:
        if self.asynchronous:
            return self._ask_async()
        if not self._pending:
            self._pending = [np.asarray(x, dtype=float) for x in self.es.ask()]
            self._ids, self._told, self._given = {}, {}, 0
        if self._given == len(self._pending):
            return None  # wait for the rest of this generation
        i = self._given
        self._given += 1
        sid = self._new_id()
        self._ids[sid] = i
        return Suggestion(sid, self._pending[i][: self.dimension].copy())

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        told = (None if values is None else float(values[0]), _violation(constraints))
        if self.asynchronous:
            self._tell_async(id, told)
            return
        if id not in self._ids:
            return  # from an earlier generation: already accounted for
        self._told[self._ids[id]] = told
        if len(self._told) < len(self._pending):
            return
        fitness = [-v for v in penalised([self._told[i] for i in range(len(self._pending))])]  # pycma minimises
        self.es.tell(self._pending, fitness)
        self._pending, self._ids, self._told = [], {}, {}
        if self.restarts_left > 0 and self.es.stop():
            self._restart()

    # -- asynchronous ----------------------------------------------------------------------

    def _ask_async(self) -> Suggestion:
        if not self._pending:  # a fresh draw (injected warm starts come first)
            self._pending = [np.asarray(x, dtype=float) for x in self.es.ask()]
        x = self._pending.pop(0)
        sid = self._new_id()
        self._out[sid] = x
        return Suggestion(sid, x[: self.dimension].copy())

    def _tell_async(self, id: int, told: tuple[float | None, float]) -> None:
        x = self._out.pop(id, None)
        if x is None:
            return
        self._buffer.append((x, *told))
        popsize = self.es.popsize
        if len(self._buffer) < popsize:
            return
        batch, self._buffer = self._buffer[:popsize], self._buffer[popsize:]
        fitness = [-v for v in penalised([(v, c) for _, v, c in batch])]
        self.es.tell([x for x, _, _ in batch], fitness)
        self._pending = []  # later asks draw from the updated distribution
        if self.restarts_left > 0 and self.es.stop():
            self._restart()


def _violation(constraints: tuple[float, ...] | None) -> float:
    """The summed positive constraint values (0: every constraint met, or none told)."""
    return sum(max(0.0, float(c)) for c in constraints) if constraints else 0.0


def penalised(told: list[tuple[float | None, float]]) -> list[float]:
    """Values to maximise for one update, from (told value or None when failed, violation) per
    trial: feasible trials keep their value, an infeasible one gets the worst finite value of
    the update minus its violation, a failed one (or a non-finite value) 1 below all of those."""
    finite = [v for v, _ in told if v is not None and math.isfinite(v)]
    worst = min(finite) if finite else 0.0
    out = [None if v is None or not math.isfinite(v) else (worst - c if c > 0 else v) for v, c in told]
    seen = [v for v in out if v is not None]
    floor = min(seen) - 1.0 if seen else 0.0
    return [floor if v is None else v for v in out]
