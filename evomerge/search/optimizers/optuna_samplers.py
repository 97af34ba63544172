"""Optuna's samplers (TPE, GP, NSGA-II) behind the ask/tell protocol.

One study per run, one float distribution per gene on [0, 1]. The study lives
in memory: a resume rebuilds it by replaying the ledger's completions through
the same asks and tells (the ledger, not Optuna's storage, is what is durable).

Constraints go to the samplers the way Optuna's own ask/tell code expects: the
trial's constraint values (<= 0 feasible) are set on it before ``study.tell``,
and the sampler reads them from its system attributes when it next samples
(TPE and GP model feasibility; NSGA-II uses constrained domination). Optuna 5
takes them as ``trial.set_constraint`` (one ``constraints:<i>`` attribute
each; ``constraints_func`` is deprecated there); Optuna 4 through
``constraints_func``, which its ``after_trial`` calls on the told trial and
which returns the values stored on it as a user attribute.
"""

from __future__ import annotations

import numpy as np

from evomerge.search.optimizers.base import Optimizer, Suggestion, auto_options, register_optimizer

_CONSTRAINTS_ATTR = "evomerge.constraints"  # Optuna 4: the told values, for constraints_func


def _told_constraints(trial) -> tuple[float, ...]:
    """``constraints_func`` for Optuna 4: the values ``tell`` stored on the trial."""
    return tuple(trial.user_attrs[_CONSTRAINTS_ATTR])


def _given(constraints_func) -> dict:
    # Only when set: Optuna 5 deprecates the argument, and early 4.x GP samplers lack it.
    return {"constraints_func": constraints_func} if constraints_func is not None else {}


def _set_constraint_api() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


class OptunaOptimizer(Optimizer):
    def _sampler(self, seed: int, constraints_func=None):
        raise NotImplementedError

    def __init__(self, dimension: int, n_objectives: int = 1, seed: int = 0, *, storage=None, study_name=None) -> None:
        super().__init__(dimension, n_objectives, seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._dist = {f"x{i:03d}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(dimension)}
        self.study = optuna.create_study(
            directions=["maximize"] * n_objectives,
            sampler=self._sampler(seed),
            storage=storage,
            study_name=study_name,
            load_if_exists=storage is not None,
        )
        self._trials: dict[int, object] = {}

    def expect_constraints(self, n: int) -> None:
        super().expect_constraints(n)
        if n and not _set_constraint_api():  # Optuna 4: the sampler must be built with the function
            self.study.sampler = self._sampler(self.seed, constraints_func=_told_constraints)

    def warm_start(self, points: list[np.ndarray]) -> None:
        for p in points:
            self.study.enqueue_trial({k: float(v) for k, v in zip(self._dist, p, strict=True)})

    def ask(self) -> Suggestion:
        trial = self.study.ask(self._dist)
        sid = self._new_id()
        self._trials[sid] = trial
        return Suggestion(sid, np.array([trial.params[k] for k in self._dist]))

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        import optuna

        trial = self._trials.pop(id)
        if values is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        if constraints is not None:  # before tell: the sampler reads them when the trial completes
            if _set_constraint_api():
                for i, c in enumerate(constraints):
                    trial.set_constraint(str(i), float(c))
            else:
                trial.set_user_attr(_CONSTRAINTS_ATTR, [float(c) for c in constraints])
        self.study.tell(trial, list(values) if self.n_objectives > 1 else float(values[0]))


@register_optimizer("tpe")
class TPE(OptunaOptimizer):
    max_objectives = None  # multi-objective TPE (MOTPE) when told several values
    def _sampler(self, seed: int, constraints_func=None):
        import optuna

        return optuna.samplers.TPESampler(seed=seed, multivariate=True, **_given(constraints_func))


# What one GP proposal may cost, by objectives: the fit's window (gp_window) and the acquisition search
# (Optuna's quasi-random preliminary points, then its local searches). With three objectives and 500
# trials, Optuna's defaults (all trials, 2048, 10) took up to 5.8 s a proposal (log EHVI over a large
# front); these take 0.28 s in benchmarks/controller_cost.py. The smaller search costs no hypervolume
# there; the window of 100 about 1-2% at 150 evaluations (benchmarks/README.md).
_GP_EFFORT = {
    "one": {"max_trials": 200, "acq_samples": 2048, "acq_local_searches": 10},
    "several": {"max_trials": 100, "acq_samples": 256, "acq_local_searches": 4},
}


@register_optimizer("gp")
class GP(OptunaOptimizer):
    """Optuna's GPSampler: log EI, or log EHVI for several objectives; while suggestions are
    out (an asynchronous executor's other slots, a bracket asked at once) their points enter as
    pending, so parallel proposals spread instead of piling up: through Optuna's q-batch forms
    (qLogEI; qLogEHVI with constraints), or, with several objectives, as completed at the worst
    told values (gp_window's constant liar: Optuna's qLogEHVI costs seconds a proposal there).
    ``deterministic_objective``: the GP interpolates (no noise term): right for a fitness
    that a re-evaluation reproduces exactly (a merge distance; one fixed subset of examples),
    wrong across fidelity levels. ``max_trials`` (null: all): past that many completed trials
    the GP is fitted to the best and the latest (gp_window), which keeps a proposal's cost
    bounded; ``acq_samples`` and ``acq_local_searches``: the acquisition search's effort. Each
    defaults ("auto") to ``_GP_EFFORT`` for one objective or several."""

    max_objectives = None  # Optuna's GP sampler handles several objectives too

    def __init__(self, dimension: int, n_objectives: int = 1, seed: int = 0, *, n_startup_trials: int = 10,
                 deterministic_objective: bool = False, max_trials: int | None | str = "auto",
                 acq_samples: int | str = "auto", acq_local_searches: int | str = "auto", **kwargs) -> None:
        acq = auto_options(_GP_EFFORT, n_objectives, max_trials=max_trials, acq_samples=acq_samples,
                           acq_local_searches=acq_local_searches)
        max_trials = acq.pop("max_trials")
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, not {n_startup_trials}")
        if max_trials is not None and (not isinstance(max_trials, int) or max_trials < 2 * n_startup_trials):
            raise ValueError(f"max_trials must be auto, null or at least twice n_startup_trials, not {max_trials}")
        bad = [f"{k} ({v})" for k, v in acq.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad:
            raise ValueError(f"gp options must be auto or whole numbers >= 1: {', '.join(bad)}")
        self._options = {"n_startup_trials": n_startup_trials, "deterministic_objective": deterministic_objective}
        self._max_trials, self._acq = max_trials, acq
        super().__init__(dimension, n_objectives, seed, **kwargs)

    def expect_constraints(self, n: int) -> None:
        super().expect_constraints(n)
        if n and _set_constraint_api():  # before any ask: rebuilt without the liar (see _sampler)
            self.study.sampler = self._sampler(self.seed)

    def _sampler(self, seed: int, constraints_func=None):
        from evomerge.search.optimizers.gp_window import windowed_gp_sampler

        # Several objectives, unconstrained: pending points as a constant liar (gp_window), as Optuna's
        # q-batch form costs seconds a proposal there. Constraints keep Optuna's form (a lie would need
        # constraint values too).
        liar = self.n_objectives > 1 and constraints_func is None and not self.n_constraints
        return windowed_gp_sampler(self._max_trials, self._acq["acq_samples"], self._acq["acq_local_searches"],
                                   liar=liar, seed=seed, **self._options, **_given(constraints_func))


@register_optimizer("nsga2")
class NSGA2(OptunaOptimizer):
    max_objectives = None

    def _sampler(self, seed: int, constraints_func=None):
        import optuna

        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16, **_given(constraints_func))
