"""Any registered evomerge optimiser as a Tune ``Searcher``.

``suggest`` is the optimiser's ``ask`` (the point decoded into a Tune config of gene values,
``space.config_of``; ``None`` while the optimiser waits, e.g. CMA-ES for the rest of its
generation, and Tune asks again later); ``on_trial_complete`` is its ``tell``: the trial's
last reported ``fitness`` (or, for a Pareto search, each objective sign-corrected), which for a
trial a scheduler stopped early is its score at the highest level it reached, what evomerge's
successive halving tells too. An errored trial is told as failed (``None``). Trials the
searcher did not suggest are ignored.

State: like evomerge's own resume, the searcher's state is the sequence of what it was asked
and told (each ask with its point). ``save`` writes that log as JSON; ``restore`` builds a
fresh optimiser from the run's settings and replays the log through it: evomerge's optimisers
are deterministic given their seed and that sequence, so the optimiser continues its very
trajectory, and the replay checks each point it proposes again against the one recorded. The
same replay makes the searcher picklable whatever its optimiser holds (Tune pickles it into the
experiment).

Randomness: pycma (``cmaes``, ``lq_cmaes``) seeds and draws from numpy's global generator, which
Tune's own code draws from too (ASHA picks a bracket for each trial with it), so the optimiser
would propose other points with another scheduler or after a restore. The searcher gives its
optimiser a global generator of its own: swapped in around every call (seeded from ``seed``
when the optimiser is built), swapped out after, so the optimiser's draws depend on nothing
else in the driver and the replay finds the very same points.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from ray.tune.search import Searcher

from evomerge.errors import EvomergeError
from evomerge.integrations.tune.prepared import TuneRun
from evomerge.integrations.tune.space import config_of
from evomerge.integrations.tune.trainable import FITNESS
from evomerge.io.atomic import atomic_write_text
from evomerge.search.objectives import unique_objectives

_FORMAT = 1


class EvomergeSearcher(Searcher):
    """``run``'s optimiser (or ``optimizer`` with ``options``; ``seed``: the run's unless
    given) searching ``run.space`` for Tune. Give Tune no ``param_space``: the space is the
    run's. Use it with ``TuneConfig(metric="fitness", mode="max")``."""

    def __init__(self, run: TuneRun, optimizer: str | None = None, options: dict | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=FITNESS, mode="max")
        self.run = run
        self.spec = run.optimizer_spec(optimizer, options)
        self.seed = run.config.seed if seed is None else seed
        self._reset()

    def _reset(self) -> None:
        self._numpy_state = None
        with self._own_global_rng():
            np.random.seed(self.seed % 2**32)  # for optimisers that draw from it without seeding it
            self.optimizer = self.run.build_optimizer(self.spec, self.seed)
        self._live: dict[str, int] = {}  # Tune trial id -> the optimiser's suggestion id
        self._log: list[list] = []  # ["ask", trial, point] and ["tell", trial, values or None]

    # -- the Searcher contract -----------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        with self._own_global_rng():
            suggestion = self.optimizer.ask()
        if suggestion is None:
            return None
        x = [float(v) for v in suggestion.x]
        self._live[trial_id] = suggestion.id
        self._log.append(["ask", trial_id, x])
        return config_of(self.run.space, x)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._live:
            return
        values = None if error else self._told(result)
        self._tell(trial_id, values)
        self._log.append(["tell", trial_id, None if values is None else list(values)])

    def save(self, checkpoint_path: str) -> None:
        state = {"format": _FORMAT, "optimizer": self.spec.model_dump(), "seed": self.seed,
                 "log": self._log}
        atomic_write_text(Path(checkpoint_path), json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        if state.get("format") != _FORMAT:
            raise EvomergeError(
                f"{checkpoint_path}: not an evomerge searcher state this version reads "
                f"(format {state.get('format')!r}, expected {_FORMAT})."
            )
        if state["optimizer"] != self.spec.model_dump() or state["seed"] != self.seed:
            raise EvomergeError(
                f"{checkpoint_path}: the searcher was saved with optimizer {state['optimizer']} and "
                f"seed {state['seed']}, not {self.spec.model_dump()} and seed {self.seed}; restore "
                f"it with the searcher the experiment started with."
            )
        self._replay(state["log"], checkpoint_path)

    # -- pickling: the log, never the optimiser --------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["optimizer"], state["_live"], state["_numpy_state"]
        return state

    def __setstate__(self, state: dict) -> None:
        log = state.pop("_log")
        self.__dict__.update(state)
        self._replay(log, "the pickled searcher")

    # -- internals -------------------------------------------------------------------------

    def _told(self, result: dict | None) -> tuple[float, ...] | None:
        if not result or FITNESS not in result:
            return None  # stopped before its first report
        if self.optimizer.n_objectives == 1:
            return (float(result[FITNESS]),)
        objectives = unique_objectives(list(self.run.objectives))
        return tuple(o.sign * float(result[o.key]) for o in objectives)

    def _tell(self, trial_id: str, values) -> None:
        with self._own_global_rng():
            self.optimizer.tell(self._live.pop(trial_id), None if values is None else tuple(values))

    @contextmanager
    def _own_global_rng(self) -> Iterator[None]:
        """numpy's global generator as this optimiser left it, for the time of one call."""
        outer = np.random.get_state()
        if self._numpy_state is not None:
            np.random.set_state(self._numpy_state)
        try:
            yield
        finally:
            self._numpy_state = np.random.get_state()
            np.random.set_state(outer)

    def _replay(self, log: list[list], where: str) -> None:
        self._reset()
        for event, trial_id, data in log:
            if event == "tell":
                self._tell(trial_id, data)
            else:
                with self._own_global_rng():
                    suggestion = self.optimizer.ask()
                if suggestion is None or not np.allclose(suggestion.x, data, rtol=0, atol=1e-12):
                    raise EvomergeError(
                        f"{where}: replaying the searcher's log, optimizer {self.spec.name} proposed "
                        f"another point for trial {trial_id} than it did before; it is not "
                        f"deterministic given its seed, so this experiment cannot be restored."
                    )
                self._live[trial_id] = suggestion.id
            self._log.append([event, trial_id, data])
