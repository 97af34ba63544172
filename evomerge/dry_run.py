"""A dry run: everything a search would need, checked cheapest first, and one recipe timed.

``dry_run`` loads the config, the space, the tasks and the sources' headers as ``run_search``
would, plans the recipe a typical trial merges, loads one worker and times that recipe at each
fidelity level, and returns the plan (``evomerge.search.plan.RunPlan``) with a wall-time
estimate. It writes nothing: no run directory, ledger or MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from evomerge.config.run import RunConfig
from evomerge.errors import EvomergeError
from evomerge.run import check_base_for, check_trials, prepare, with_ray_address, worker_spec
from evomerge.search.executors import executor_class
from evomerge.search.plan import RunPlan
from evomerge.search.rundir import resolve_sources, space_path


def dry_run(config_path: Path, run_dir: Path | None = None, *, trials: int | None = None,
            ray_address: str | None = None) -> RunPlan:
    """Check everything ``run_search`` would need, cheapest first and models last, and return
    the plan with a wall-time estimate from one typical recipe timed on a loaded worker.
    Writes nothing: no run directory, ledger or MLflow run (a sql ledger is only connected to)."""
    from evomerge.search.executors.worker import Worker
    from evomerge.search.plan import estimate, schedule, time_recipe
    from evomerge.search.preflight import check_sources
    from evomerge.search.resources import check_executor, check_run_dir, check_tracking

    check_trials(trials)
    config = with_ray_address(RunConfig.load(config_path), ray_address)
    p = prepare(config, config_path)  # space, tasks and their data, objectives, optimiser, kinds
    sources = resolve_sources(p.space, config, config_path)
    where = space_path(config, config_path)
    check_sources(p.space, sources, where=where)  # headers, fit, NaN/inf: no model is built
    check_base_for(p, sources, config)
    timed, timed_words = _typical_recipe(p.space, config.seed)
    _check_plans(timed, sources, where)
    ledger = "not checked (give --out)" if run_dir is None else check_run_dir(run_dir, config.ledger.kind)
    if config.ledger.kind == "sql":  # prepare() connected to it
        ledger = f"{ledger}; the database answers" if run_dir is not None else "the database answers"
    storage = [("ledger", ledger), ("MLflow", check_tracking(config.tracking, run_dir))]
    _, options = executor_class(config.executor)
    slots = check_executor(config, options)
    kind = config.executor.resolved_kind
    workers = "auto" if slots.workers is None else f"{slots.workers} worker(s)"
    threads = f", {config.executor.torch_threads} torch thread(s) each" if config.executor.torch_threads else ""
    n_told = p.optimizer.n_objectives
    plan = RunPlan(
        config_path=str(config_path), space_file=str(where), space_kind=p.space.kind,
        genes=p.space.genes(), sources={r: str(v) for r, v in sources.items()},
        tasks=[(t.name, t.size()) for t in p.tasks], objectives=[o.key for o in p.objectives],
        optimizer=config.optimizer.name, optimizer_options=dict(config.optimizer.options),
        told=f"every objective ({n_told}: a Pareto search)" if n_told > 1 else "one value (the weighted sum)",
        schedule=schedule(config, [t.size() for t in p.tasks], trials or config.budget.trials),
        budget_seconds=config.budget.seconds, executor=f"{kind}, {workers}{threads} on {config.device}",
        parallel=slots.parallel, storage=storage, notes=slots.notes,
        timed_recipe=timed_words, constraints=[str(c) for c in p.constraints],
    )
    if kind == "ray" and config.device.startswith("cuda"):
        plan.not_timed = "device cuda is the Ray cluster's; this machine does not time it"
        return plan
    import os

    import torch

    threads_before = torch.get_num_threads()  # a worker sets the process's torch threads
    try:
        t0 = time.perf_counter()
        try:
            worker = Worker(worker_spec(config, p, sources), tasks=p.tasks)
        except EvomergeError:
            raise
        except Exception as e:  # noqa: BLE001 - a model or tokenizer transformers cannot load
            raise EvomergeError(
                f"{plan.space_file}: a worker cannot load the sources ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); every source needs config.json and "
                f"safetensors weights, and the base ({p.space.source_models()[0]}) a tokenizer."
            ) from None
        timing, error = time_recipe(worker, timed, config.levels(), time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads_before)
    if error is not None:
        raise EvomergeError(
            f"{plan.space_file}: {timed_words} fails on a loaded worker ({error.rstrip('.')}); the "
            f"search's trials would fail the same way; fix the sources or tasks it names "
            f"(`evomerge space show {plan.space_file}` prints the centre recipe)."
        )
    plan.timing = timing
    plan.estimate = estimate(plan.schedule, timing, slots.parallel, os.getloadavg()[0])
    return plan


def _typical_recipe(space, seed: int, draws: int = 64):
    """The recipe a dry run times, and its description: the space's centre, unless the space's
    recipes vary in depth (layer paths) and the centre's is not typical (in the quickstart's
    space the centre is a 1-layer path, while random points give 5 or 6 layers and take about 3.5
    times as long): then a random recipe of the median depth among ``draws`` seeded ones."""
    centre = space.decode(np.full(space.dimension, 0.5))
    rng = np.random.default_rng(seed)
    samples = [space.decode(rng.random(space.dimension)) for _ in range(draws)]
    depths = [_layers(r) for r in samples]
    if None in depths or _layers(centre) is None:
        return centre, f"the space's centre recipe ({centre.merge_method})"
    median = sorted(depths)[len(depths) // 2]
    if _layers(centre) == median:
        return centre, f"the space's centre recipe ({_depth(centre)})"
    pick = samples[depths.index(median)]
    return pick, (f"a recipe of the median depth of {draws} random ones ({_depth(pick)}; the space's "
                  f"centre has {_layers(centre)})")


def _layers(recipe) -> int | None:
    return sum(s.num_layers for s in recipe.slices) if recipe.slices else None


def _check_plans(recipe, sources: dict[str, Path], where: Path) -> None:
    """``recipe`` (a decoded genome) plans over the sources' headers: what a worker does first."""
    from evomerge.io.sources import open_source
    from evomerge.merge.plan import build_plan

    opened = {ref: open_source(ref, sources) for ref in sources}
    try:
        build_plan(recipe, opened)
    except EvomergeError as e:
        raise EvomergeError(f"{where}: the space's centre recipe cannot be planned over its sources: {e}") from None
    finally:
        for c in opened.values():
            c.close()


def _depth(recipe) -> str:
    n = _layers(recipe)
    method = recipe.merge_method or "per-slice methods"
    return f"{method}, {n} layer{'s' if n != 1 else ''}" if n is not None else method
