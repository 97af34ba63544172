"""Optuna's samplers (TPE, GP, NSGA-II) behind the ask/tell protocol.

One study per run, one float distribution per gene on [0, 1]. The study lives
in memory: a resume rebuilds it by replaying the ledger's completions through
the same asks and tells (the ledger, not Optuna's storage, is what is durable).
"""

from __future__ import annotations

import numpy as np

from evomerge.search.optimizers.base import Optimizer, Suggestion, register_optimizer


class OptunaOptimizer(Optimizer):
    def _sampler(self, seed: int):
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

    def warm_start(self, points: list[np.ndarray]) -> None:
        for p in points:
            self.study.enqueue_trial({k: float(v) for k, v in zip(self._dist, p, strict=True)})

    def ask(self) -> Suggestion:
        trial = self.study.ask(self._dist)
        sid = self._new_id()
        self._trials[sid] = trial
        return Suggestion(sid, np.array([trial.params[k] for k in self._dist]))

    def tell(self, id: int, values: tuple[float, ...] | None) -> None:
        import optuna

        trial = self._trials.pop(id)
        if values is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, list(values) if self.n_objectives > 1 else float(values[0]))


@register_optimizer("tpe")
class TPE(OptunaOptimizer):
    max_objectives = None  # multi-objective TPE (MOTPE) when told several values
    def _sampler(self, seed: int):
        import optuna

        return optuna.samplers.TPESampler(seed=seed, multivariate=True)


@register_optimizer("gp")
class GP(OptunaOptimizer):
    max_objectives = None  # Optuna's GP sampler handles several objectives too
    def _sampler(self, seed: int):
        import optuna

        return optuna.samplers.GPSampler(seed=seed)


@register_optimizer("nsga2")
class NSGA2(OptunaOptimizer):
    max_objectives = None

    def _sampler(self, seed: int):
        import optuna

        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
