"""A run config prepared for Ray Tune: what the trainable and the searcher need, as plain data.

``load_tune_run`` validates a run config exactly as ``evomerge search`` does (``run.prepare``:
space, tasks, objectives, optimiser options, fidelity levels; then the sources and the base
model) and keeps what a Tune experiment needs: the space, the ``WorkerSpec`` every trial's
worker loads, the objectives (the scalarised fitness), the fidelity levels and ``eta``, and the
optimiser's name, options, seed and first points. The result is pickled into every trial, so it
holds data, never a loaded model or task.

What Tune does instead of evomerge (so the run config's settings for it are not used): the
schedule of brackets (Tune's scheduler: ASHA, HyperBand, PBT), the executor (Tune's trial
actors), the ledger and MLflow (Tune's experiment directory and loggers). Constraints and
anchor subsets need evomerge's controller, and are refused here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evomerge.config.run import OptimizerSpec, RunConfig, RunConfigError
from evomerge.errors import EvomergeError
from evomerge.search.executors import WorkerSpec
from evomerge.search.objectives import BoundObjective, pareto_told, unique_objectives
from evomerge.search.space import Space


@dataclass(frozen=True)
class TuneRun:
    """A validated run config, ready for Tune. ``trials`` is the config's ``budget.trials``
    (a natural ``num_samples``)."""

    config_path: Path
    config: RunConfig
    space: Space
    worker: WorkerSpec
    objectives: tuple[BoundObjective, ...]
    levels: tuple[int | None, ...]  # examples per task, cheapest first; None: all
    eta: int
    task_sizes: tuple[int | None, ...]
    first_points: tuple[tuple[float, ...], ...]  # priors and warm_start, proposed first

    @property
    def trials(self) -> int:
        return self.config.budget.trials

    def examples(self, rung: int) -> int:
        """Examples scored over all tasks at ``rung`` (what evomerge counts as the cost)."""
        level = self.levels[rung]
        return sum(n if level is None else min(level, n) for n in self.task_sizes if n is not None)

    def optimizer_spec(self, name: str | None = None, options: dict | None = None) -> OptimizerSpec:
        """The run's optimiser, or ``name`` (with ``options``) in its place."""
        if name is None:
            return self.config.optimizer if options is None else OptimizerSpec(
                name=self.config.optimizer.name, options=options)
        return OptimizerSpec(name=name, options=options or {})

    def build_optimizer(self, spec: OptimizerSpec, seed: int | None = None):
        """A fresh optimiser of ``spec`` over this space, told every objective where the run's
        scalarisation and the optimiser say so, and given the run's first points."""
        from evomerge.search.optimizers import OPTIMIZERS

        try:
            cls = OPTIMIZERS.get(spec.name)
        except EvomergeError as e:
            raise RunConfigError(f"{self.config_path}: optimizer.name: {e}") from None
        config = self.config.model_copy(update={"optimizer": spec})
        n_told = len(unique_objectives(list(self.objectives))) if pareto_told(
            config, cls, list(self.objectives)) else 1
        seed = self.config.seed if seed is None else seed
        try:
            optimizer = cls(self.space.dimension, n_told, seed, **spec.options)
        except (TypeError, ValueError) as e:
            raise RunConfigError(
                f"{self.config_path}: optimizer: {spec.name} cannot be built with options "
                f"{spec.options} ({e})."
            ) from None
        if self.first_points:
            try:
                optimizer.warm_start([np.asarray(p, dtype=float) for p in self.first_points])
            except NotImplementedError:
                if self.config.priors != "auto" or self.config.warm_start:  # auto: where taken
                    raise RunConfigError(
                        f"{self.config_path}: optimizer {spec.name} takes no first points, so "
                        f"priors/warm_start cannot be used with it; remove them or choose another "
                        f"optimizer."
                    ) from None
        return optimizer


def load_tune_run(config_path: str | Path) -> TuneRun:
    """Validate the run config at ``config_path`` and prepare it for Tune (reads the sources'
    headers and the base model, loads no weights)."""
    from evomerge.run import check_base_for, prepare, worker_spec
    from evomerge.search.preflight import check_sources
    from evomerge.search.priors import first_points
    from evomerge.search.rundir import resolve_sources, space_path

    config_path = Path(config_path).resolve()
    config = RunConfig.load(config_path)
    if config.constraints:
        raise RunConfigError(
            f"{config_path}: constraints: a Tune trial reports scores, and Tune's searchers and "
            f"schedulers know nothing of evomerge's constraints; remove them to run under Tune, "
            f"or run the search with `evomerge search`."
        )
    if config.multi_fidelity is not None and config.multi_fidelity.subsets == "anchors":
        raise RunConfigError(
            f"{config_path}: multi_fidelity.subsets: anchors are chosen by evomerge's controller "
            f"from its calibration trials, which Tune does not run; use subsets: random under Tune."
        )
    p = prepare(config, config_path)
    sources = resolve_sources(p.space, config, config_path)
    # Trial actors do not run in the driver's working directory: every path made absolute.
    sources = {ref: Path(path).resolve() for ref, path in sources.items()}
    check_sources(p.space, sources, where=space_path(config, config_path))
    check_base_for(p, sources, config)
    return TuneRun(
        config_path=config_path,
        config=config,
        space=p.space,
        worker=worker_spec(config, p, sources),
        objectives=tuple(p.objectives),
        levels=config.levels(),
        eta=config.multi_fidelity.eta if config.multi_fidelity else 3,
        task_sizes=tuple(t.size() for t in p.tasks),
        first_points=tuple(tuple(float(v) for v in x) for x in first_points(p.space, config, config_path)),
    )
