"""lq-CMA-ES: CMA-ES whose generations are mostly ranked by a linear-quadratic model.

Hansen's lq-CMA-ES (pycma's ``cma.fitness_models``, "A Global Surrogate Assisted CMA-ES",
GECCO 2019) keeps a global linear/quadratic regression of the fitness over the points
evaluated so far (``LQModel``: linear first, then diagonal, then full quadratic as data
allow). Each generation is sorted by the model; the model's best few are evaluated for
real, and if the model then ranks the latest true values well (Kendall tau >= 0.85) the
rest of the generation is ranked by the model alone; otherwise 1.5x as many are evaluated
and the check repeats. On smooth landscapes most of a generation never costs an evaluation.

pycma drives this through ``SurrogatePopulation``, which calls the fitness itself; a search
cannot (evaluations go through the ledger and the executors), so this module runs the same
loop as a state machine behind ask/tell, with pycma's model and settings:

- ``ask`` hands out the members of the current round (the model's best first); with
  ``asynchronous: false`` it then returns None until they are all told, as CMA-ES does at
  its generation barrier. ``min_batch`` raises a round's size to keep that many workers busy.
- With ``asynchronous: true`` a free worker is never idle while the generation has members
  left: ``ask`` hands out the next member in the model's order (a real evaluation that a
  failed tau check would have asked for next). The check runs when the told members reach
  the round's size; members still in flight when the generation closes are ranked by the
  model there, and their true values join the model when they come back.
- After each generation the model's optimum is injected into the next one (pycma's default).
- Failed trials are kept out of the model and rank last; a trial that misses a constraint
  ranks below every feasible one by its violation (as ``cmaes``: Deb's rules through
  ``penalised``) and is kept out of the model too, which describes the objective only.

Everything follows from the seed and the order of tells: the model is refitted at tells,
never on a clock, so replaying a ledger gives the same trajectory.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from evomerge.search.optimizers.base import Suggestion, register_optimizer
from evomerge.search.optimizers.cmaes import CMAES, _violation, penalised

TAU_THRESHOLD = 0.85  # pycma's tau_truth_threshold: the model ranks well enough


class _Generation:
    """One CMA-ES population and how far its true evaluation has gone."""

    def __init__(self, asked: list[np.ndarray]) -> None:
        self.asked = asked  # what pycma's ask returned: told back as is (it knows them by identity)
        self.X = [np.clip(np.asarray(x, dtype=float), 0.0, 1.0) for x in asked]
        self.values: list[float | None] = [None] * len(asked)  # minimised true values, None: not (yet) known
        self.violation = [0.0] * len(asked)
        self.failed = [False] * len(asked)
        self.handed: list[int] = []  # indices handed out, in order
        self.told: set[int] = set()
        self.order: list[int] = list(range(len(asked)))  # hand-out order of the rest: model's best first
        self.target = 0  # members that must be told before the next tau check (capped by the population)
        self.added = 0  # rows this generation added to the model

    def remaining(self) -> list[int]:
        return [i for i in self.order if i not in self.handed]


@register_optimizer("lq_cmaes")
class LqCMAES(CMAES):
    def __init__(self, dimension: int, n_objectives: int = 1, seed: int = 0, *, asynchronous: bool = False,
                 min_batch: int = 1, tau_threshold: float = TAU_THRESHOLD, inject: bool = True,
                 **cmaes_options) -> None:
        # cmaes's own options (sigma0, popsize, x0, restarts, restart_strategy) pass through;
        # ``asynchronous`` is this module's (see above), not cmaes's.
        super().__init__(dimension, n_objectives, seed, **cmaes_options)
        if min_batch < 1:
            raise ValueError(f"min_batch must be at least 1, not {min_batch}")
        if not -1 <= tau_threshold <= 1:
            raise ValueError(f"tau_threshold is a Kendall tau, in [-1, 1], not {tau_threshold}")
        from cma.fitness_models import LQModel, SurrogatePopulationSettings

        self.asynchronous = asynchronous
        self.min_batch = min_batch
        self.tau_threshold = tau_threshold
        self.inject = inject
        self.model = LQModel()
        self._settings = SurrogatePopulationSettings({}, 0, None)
        self._gen: _Generation | None = None
        self._members: dict[int, int] = {}  # suggestion id -> index in the current generation
        self._late: dict[int, np.ndarray] = {}  # asynchronous: out when their generation closed
        self.evaluations_saved = 0  # members ranked by the model alone (for the record)

    # -- ask -------------------------------------------------------------------------------

    def ask(self) -> Suggestion | None:
        if self._gen is None:
            self._start_generation()
        gen = self._gen
        left = gen.remaining()
        if not left:
            return None  # every member is out: wait for them
        if len(gen.handed) >= min(gen.target, len(gen.X)) and not self.asynchronous:
            return None  # the round is out: its tau check decides what comes next
        i = left[0]
        gen.handed.append(i)
        sid = self._new_id()
        self._members[sid] = i
        return Suggestion(sid, gen.X[i][: self.dimension].copy())

    def _start_generation(self) -> None:
        gen = self._gen = _Generation(self.es.ask())
        limit = self._settings.model_max_size_factor * len(gen.X)
        if limit > self.model.settings.max_absolute_size:  # a larger population: a restart
            if self.model.settings.max_absolute_size:
                self.model.reset()
            self.model.settings.max_absolute_size = limit
        first = int(1 + max(len(gen.X) * self._settings.min_evals_percent / 100,
                            3 / self.model.settings.truncation_ratio - self.model.size))
        self._next_round(gen, max(first, self.min_batch))

    def _next_round(self, gen: _Generation, target: int) -> None:
        gen.target = target  # may pass the population: pycma sorts that many rows then
        rest = gen.remaining()
        if self.model.size > 1:  # the model's best first (pycma minimises); stable for ties
            predicted = [float(self.model.eval(gen.X[i])) for i in rest]
            rest = [rest[k] for k in np.argsort(predicted, kind="stable")]
        gen.order = gen.handed + rest

    # -- tell ------------------------------------------------------------------------------

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        value = None if values is None or not math.isfinite(values[0]) else -float(values[0])
        violation = _violation(constraints)
        if id in self._late:  # its generation is closed: its value still teaches the model
            x = self._late.pop(id)
            if value is not None and violation <= 0:
                self._add(x, value)
            return
        if id not in self._members:
            return
        gen, i = self._gen, self._members.pop(id)
        gen.told.add(i)
        gen.violation[i] = violation
        if value is None:
            gen.failed[i] = True
        else:
            gen.values[i] = value
            if violation <= 0:
                gen.added += self._add(gen.X[i], value)
        if len(gen.told) >= min(gen.target, len(gen.X)) and (self.asynchronous or len(gen.told) == len(gen.handed)):
            self._check(gen)

    def _add(self, x: np.ndarray, value: float) -> int:
        before = self.model.count
        with warnings.catch_warnings():  # a repeated point is not added; pycma warns
            warnings.simplefilter("ignore")
            self.model.add_data_row(x, value)
        return self.model.count - before

    def _check(self, gen: _Generation) -> None:
        """The round is told: rank the rest by the model, or evaluate more of them."""
        self.model.sort(gen.target)  # the latest rows, as pycma's loop sorts them
        told = len(gen.told)
        tau = float(self.model.kendall(self._settings.n_for_tau(len(gen.X), told))) if self.model.size else 0.0
        if tau >= self.tau_threshold or not gen.remaining():
            self._finish(gen, tau)
            return
        self._next_round(gen, gen.target + math.ceil(gen.target / 2))

    def _finish(self, gen: _Generation, tau: float) -> None:
        self.model.sort(gen.added)
        self.model.adapt_max_relative_size(tau)
        known = [v for v, f, c in zip(gen.values, gen.failed, gen.violation, strict=True)
                 if v is not None and not f and c <= 0]
        if len(gen.told) == len(gen.X) or not known or self.model.size < 2:
            ranked = [v if v is not None else math.inf for v in gen.values]  # untold: rank last
        else:  # the model ranks the whole generation, shifted so its best is the best true value
            F = [float(self.model.eval(x)) for x in gen.X]
            ranked = [f - min(F) + min(known) for f in F]
        told = [(None if gen.failed[i] or not math.isfinite(ranked[i]) else -ranked[i], gen.violation[i])
                for i in range(len(gen.X))]
        self.es.tell(gen.asked, [-v for v in penalised(told)])
        self.evaluations_saved += len(gen.X) - len(gen.told)
        for sid, i in list(self._members.items()):  # asynchronous: still out
            self._late[sid] = gen.X[i]
        self._members.clear()
        self._gen = None
        if self.inject and self.model.size > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xopt = np.asarray(self.model.xopt, dtype=float)
            if np.all(np.isfinite(xopt)):
                self.es.inject([xopt])  # unforced: pycma shortens a long step, as fmin_lq_surr2 does
        if self.restarts_left > 0 and self.es.stop():
            self._restart()
