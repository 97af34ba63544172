"""Running a search: from a run config to a finished (or resumed) run directory.

This is where the one-way path is wired together, and nowhere else:
config -> search space -> optimiser.ask -> recipe -> merge -> evaluate ->
optimiser.tell -> ledger -> tracker. ``prepare`` validates everything that can
be checked before a model loads (space, tasks, objectives, optimiser options,
executor kind and options, fidelity levels); ``run_search`` then freezes the
config into the run directory, opens the ledger, the executor and the tracker
through their registries, and hands them to the ``Controller``. Nothing here
knows which executors, ledgers or optimisers exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.config.run import RunConfig, RunConfigError
from evomerge.errors import EvomergeError
from evomerge.io.sources import model_dir
from evomerge.search import fingerprints, task_splits
from evomerge.search.anchoring import anchoring_for, check_anchorable
from evomerge.search.constraints import bind_constraints, feasible
from evomerge.search.controller import Controller
from evomerge.search.executors import TaskSpec, WorkerSpec, executor_class, open_executor
from evomerge.search.ledgers import LEDGERS, find_ledger, open_ledger
from evomerge.search.objectives import (
    best_evaluation,
    bind_objectives,
    fitness,
    pareto_told,
    unique_objectives,
)
from evomerge.search.priors import first_points
from evomerge.search.progress import Progress
from evomerge.search.rundir import (
    RUN_FILE,
    RunLock,
    check_ledger_fits,
    freeze_config,
    has_run,
    resolve_sources,
    space_path,
    top_rung,
)
from evomerge.tracking.optuna_mirror import check_storage as check_optuna_storage
from evomerge.tracking.optuna_mirror import start_optuna_mirror


@dataclass
class SearchResult:
    run_dir: Path
    evaluated: int  # evaluations run in this session (replayed ones not counted)
    trials: int  # trials (candidate recipes) of the whole run
    duplicates: int
    failed: int
    best_trial: int | None
    best_fitness: float | None
    examples_scored: float = 0.0  # evaluation cost of the whole run, in examples
    examples_at_top: float = 0.0  # what scoring every trial at the top level would cost
    ledger: str | None = None  # the ledger's kind
    utilisation: dict[str, float] | None = None  # slot busy time / wall time, this session
    succeeded: int = 0  # evaluations of the run scored at the top fidelity: what front and export use
    infeasible: int = 0  # of those, the ones that miss a constraint (never the best)
    first_error: str | None = None  # the reason of the run's first failed evaluation, if any

    @property
    def all_failed(self) -> bool:
        """The run has trials and not one of them was scored at the top fidelity: nothing to
        show on a front or to export, whatever the count of finished evaluations says."""
        return self.trials > 0 and self.succeeded == 0


@dataclass
class Prepared:
    """A run, validated: everything but the models."""

    space: object
    tasks: list
    objectives: list
    optimizer: object
    constraints: list = field(default_factory=list)


def prepare(config: RunConfig, config_path: Path) -> Prepared:
    """Everything a run needs, validated before any model is loaded."""
    from evomerge.search.optimizers import OPTIMIZERS
    from evomerge.search.space import load_space

    space = load_space(space_path(config, config_path))
    tasks, objectives = bind_objectives(config, config_path)
    tasks, constraints = bind_constraints(config, config_path, tasks)
    try:
        cls = OPTIMIZERS.get(config.optimizer.name)
    except EvomergeError as e:
        raise RunConfigError(f"{config_path}: optimizer.name: {e}") from None
    n_told = len(unique_objectives(objectives)) if pareto_told(config, cls, objectives) else 1
    try:
        optimizer = cls(space.dimension, n_told, config.seed, **config.optimizer.options)
    except (TypeError, ValueError) as e:
        raise RunConfigError(
            f"{config_path}: optimizer: {config.optimizer.name} cannot be built with options "
            f"{config.optimizer.options} ({e})."
        ) from None
    if constraints:
        import inspect

        if "constraints" not in inspect.signature(optimizer.tell).parameters:
            raise RunConfigError(
                f"{config_path}: constraints: optimizer {config.optimizer.name} is not told "
                f"constraints (its tell has no `constraints` argument); use cmaes, tpe, gp, nsga2 "
                f"or random, or remove the constraints."
            )
        optimizer.expect_constraints(len(constraints))
    warm = first_points(space, config, config_path)
    if warm:
        try:
            optimizer.warm_start(warm)
        except NotImplementedError:
            if config.priors != "auto" or config.warm_start:  # auto priors go where they are taken
                raise RunConfigError(
                    f"{config_path}: optimizer {config.optimizer.name} takes no first points, so "
                    f"priors/warm_start cannot be used with it; remove them or choose another optimizer."
                ) from None
    check_anchorable(config, tasks, config_path)
    for task in tasks:
        levels = [lv for lv in config.levels() if lv is not None]
        size = task.size()
        if size is not None and levels and max(levels) > size:
            raise RunConfigError(
                f"{config_path}: fidelity {max(levels)} is more than the {size} examples of task "
                f"{task.name!r}; use a smaller level or null (all examples)."
            )
    try:
        executor_class(config.executor)
    except EvomergeError as e:
        raise RunConfigError(f"{config_path}: {e}") from None
    if config.ledger.kind not in LEDGERS:
        raise RunConfigError(f"{config_path}: ledger.kind: {LEDGERS.unknown_message(config.ledger.kind)}")
    check = getattr(LEDGERS.get(config.ledger.kind), "check", None)
    if check is not None:
        from pydantic import ValidationError

        from evomerge.validation import problems

        try:
            check(config.ledger.options)
        except ValidationError as e:
            raise RunConfigError(f"{config_path}: ledger ({config.ledger.kind}): {problems(e)}.") from None
        except EvomergeError as e:
            raise RunConfigError(f"{config_path}: {e}") from None
    return Prepared(space, tasks, objectives, optimizer, constraints)


def _undo_start(run_dir: Path, fresh_dir: bool) -> None:
    """A run refused while starting leaves the directory as it found it."""
    if fresh_dir:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        (run_dir / RUN_FILE).unlink(missing_ok=True)


def with_ray_address(config: RunConfig, ray_address: str | None) -> RunConfig:
    """``--ray-address``: the run's executor becomes Ray at that address (``""``: start Ray here)."""
    if ray_address is None:
        return config
    executor = config.executor.model_dump()
    executor.update(kind="ray", address=ray_address or None)
    return config.model_copy(update={"executor": type(config.executor).model_validate(executor)})


def worker_spec(config: RunConfig, p: Prepared, sources: dict[str, Path]) -> WorkerSpec:
    """What every worker of the run loads: the sources, the base (resident model), the tasks."""
    return WorkerSpec(
        sources=sources,
        base=p.space.source_models()[0],
        tasks=tuple(TaskSpec(t.ref or t.name, config.split, config.allow_test_split) for t in p.tasks),
        device=config.device,
        torch_threads=config.executor.torch_threads,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
        sources_on=config.sources_on,
    )


def run_search(
    config_path: Path,
    run_dir: Path,
    *,
    trials: int | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[Progress], None] | None = None,
    take_over: bool = False,
    ray_address: str | None = None,
    allow_changed_sources: bool = False,
) -> SearchResult:
    """Start a run in ``run_dir``, or with ``resume`` continue the one there.

    ``take_over``: take the run's lease from a controller that is gone (shared ledgers).
    ``ray_address``: run on Ray at this address (``auto``: the running cluster).
    ``allow_changed_sources``: resume although a source model changed since the run started."""
    check_trials(trials)
    config = with_ray_address(RunConfig.load(config_path), ray_address)
    p = prepare(config, config_path)
    exists = has_run(run_dir)
    if exists and not resume:
        raise EvomergeError(
            f"{run_dir} already holds a run; continue it with `evomerge resume {run_dir}` "
            f"or choose another --out."
        )
    if resume and not exists:
        raise EvomergeError(
            f"{run_dir} holds no run to resume (no ledger.db or ledger.jsonl); give the directory "
            f"an `evomerge search --out` wrote, or start the run with `evomerge search`."
        )
    check_optuna_storage(config.tracking.optuna, run_dir, config_path, resume=resume)
    sources = resolve_sources(p.space, config, config_path)
    prints, record_prints = preflight(run_dir, config, config_path, p, sources, resume=resume,
                                      allow_changed_sources=allow_changed_sources, log=log)
    worker = worker_spec(config, p, sources)
    run_dir.mkdir(parents=True, exist_ok=True)
    fresh_dir = not any(run_dir.iterdir())
    lock = RunLock(run_dir)
    try:
        if not resume:  # the config before the ledger: killed in between, the directory holds no
            freeze_config(config, config_path, run_dir)  # run and `search` starts it again
        ledger = open_ledger(run_dir, config.ledger, take_over=take_over)
    except BaseException:
        lock.release()
        if not resume:
            _undo_start(run_dir, fresh_dir)
        raise
    if not resume and hasattr(ledger, "load_config") and ledger.load_config() is not None:
        ledger.close()
        lock.release()
        _undo_start(run_dir, fresh_dir)
        raise EvomergeError(
            f"the ledger database already holds a run named {ledger.run!r}; continue it with "
            f"`evomerge resume`, or name this one differently (ledger.run)."
        )
    if not resume and hasattr(ledger, "save_config"):  # a shared ledger keeps the run's config too
        ledger.save_config((run_dir / RUN_FILE).read_text())
    if record_prints:  # what resume compares the sources with (search/fingerprints.py)
        fingerprints.record(run_dir, prints)
    if not resume:  # which documents the search scores (search/task_splits.py)
        task_splits.write_record(run_dir, p.tasks)
    executor = tracker = mirror = controller = None
    finished = False
    summary: dict[str, float] = {}
    try:
        abandoned = ledger.abandon_running()
        if abandoned:
            log(f"{abandoned} evaluation(s) were in flight when the run stopped; they run again")
        tracker = start_tracking(run_dir, p.space, p.objectives, ledger, log, p.constraints)
        mirror = start_optuna_mirror(run_dir, config, p.space, p.objectives, ledger, log, p.constraints)
        executor = open_executor(config.executor, worker, tasks=p.tasks)
        controller = Controller(
            config, p.space, [t.size() for t in p.tasks], p.objectives, p.optimizer, executor, ledger,
            budget=trials if trials is not None else config.budget.trials, log=log, progress=progress,
            on_record=_to_each([tracker, mirror]), constraints=p.constraints,
            anchoring=anchoring_for(config, run_dir, log),
        )
        controller.run(ledger.completions())
        finished = True
        summary = controller.utilisation()
        s = controller.s
        top = top_rung(config)
        complete = [e for e in ledger.evaluations("complete") if e.scores and e.rung == top]
        failures = ledger.evaluations("failed")
    finally:
        if executor is not None:
            executor.close()
        if tracker is not None and tracker.close("FINISHED" if finished else "KILLED", summary) and finished:
            log(f"tracked in MLflow ({tracker.tracker.uri}); `evomerge ui {run_dir}` shows it")
        if mirror is not None and mirror.close("FINISHED" if finished else "KILLED") and finished:
            log(f"mirrored into Optuna (study {mirror.tracker.study_name!r}); `evomerge dashboard {run_dir}` shows it")
        ledger.close()
        lock.release()
    best = best_evaluation(complete, p.objectives, p.constraints)
    sizes = [n for n in controller.sizes if n is not None]
    top_level = controller.rungs.levels[-1]
    return SearchResult(
        run_dir,
        evaluated=s.evaluated,
        trials=s.trials,
        duplicates=s.duplicates,
        failed=s.failed,
        best_trial=best.trial if best else None,
        best_fitness=fitness(best.scores, p.objectives) if best else None,
        examples_scored=s.examples,
        examples_at_top=s.trials * sum(controller.rungs.cost(top_level, n) for n in sizes),
        ledger=find_ledger(run_dir),
        utilisation=summary or None,
        succeeded=len(complete),
        infeasible=sum(not feasible(e.scores, p.constraints) for e in complete),
        first_error=failures[0].error if failures else None,
    )


def check_trials(trials: int | None) -> None:
    """``--trials`` is a number of trials: at least one (0 used to mean "the config's budget")."""
    if trials is not None and trials < 1:
        raise RunConfigError(
            f"--trials {trials}: a budget is at least 1 trial; give a positive number, or leave "
            f"--trials out to use the run config's budget.trials."
        )


def preflight(run_dir: Path, config: RunConfig, config_path: Path, p: Prepared,
              sources: dict[str, Path], *, resume: bool, allow_changed_sources: bool,
              log: Callable[[str], None]) -> tuple[dict, bool]:
    """What must hold before a run directory is written or a resumed run goes on: the ledger is
    this run's (resume), the sources did not change since the run started (resume), and they
    can be merged (``preflight.check_sources``; the weights are scanned for NaN once, when the
    run starts or its sources changed). Returns the sources' fingerprints and whether to record
    them. Nothing is written here."""
    from evomerge.search.preflight import check_sources

    scan, write = True, True
    if resume:
        ledger = open_ledger(run_dir, readonly=True)
        try:
            check_ledger_fits(run_dir, ledger, [*p.objectives, *p.constraints], p.space.source_models())
        finally:
            ledger.close()
        prints, scan = fingerprints.check_unchanged(run_dir, sources, allow_changed=allow_changed_sources, log=log)
        write = scan
    else:
        prints = fingerprints.fingerprint_sources(sources)
    if resume:
        task_splits.check_resumed(run_dir, p.tasks)
    check_sources(p.space, sources, where=space_path(config, config_path), scan_weights=scan)
    check_base_for(p, sources, config)
    return prints, write


def check_base_for(p: Prepared, sources: dict[str, Path], config: RunConfig) -> None:
    """The base (every worker's resident model) loads as allowed and suits every task (e.g. the
    chat template a task asks for: candidates keep the base's tokenizer)."""
    from evomerge.search.preflight import check_base

    base = model_dir(p.space.source_models()[0], sources)
    check_base(base, trust_remote_code=config.trust_remote_code)
    for task in p.tasks:
        task.check_model(base)


def _to_each(sinks: list):
    """The controller's ``on_record``: every started tracker (MLflow, the Optuna mirror) gets it."""
    adds = [s.add for s in sinks if s is not None]
    if not adds:
        return None
    return lambda record: [add(record) for add in adds]


def start_tracking(run_dir: Path, space, objectives, ledger, log, constraints=()):
    """The run's MLflow tracker on a background thread, or None when tracking is off."""
    config = RunConfig.load(run_dir / RUN_FILE)  # the frozen config: what gets logged
    if not config.tracking.enabled:
        return None
    from evomerge.tracking.mlflow_tracker import BackgroundTracker, MLflowTracker

    tracker = MLflowTracker(run_dir, config, objectives, space.genes(),
                            settings=config.tracking, log=log, constraints=constraints)
    return BackgroundTracker(tracker, ledger.completions())


def resume_search(
    run_dir: Path, *, trials: int | None = None, log: Callable[[str], None] = print,
    progress: Callable[[Progress], None] | None = None, take_over: bool = False,
    ray_address: str | None = None, ledger: dict | None = None, allow_changed_sources: bool = False,
) -> SearchResult:
    """Continue the run in ``run_dir``. ``ledger``: the options of a shared (sql) ledger, to
    resume on a machine that has no copy of the run directory: its config comes from the
    database."""
    if ledger is not None and not (run_dir / RUN_FILE).is_file():
        fetch_run(run_dir, ledger)
    config_path = run_dir / RUN_FILE
    if not config_path.is_file():
        raise EvomergeError(
            f"{run_dir} holds no run to resume (no run.yaml); give the directory an `evomerge "
            f"search --out` wrote (a run kept in a database: --ledger-url and --run)."
        )
    return run_search(config_path, run_dir, trials=trials, resume=True, log=log, progress=progress,
                      take_over=take_over, ray_address=ray_address,
                      allow_changed_sources=allow_changed_sources)


def fetch_run(run_dir: Path, options: dict) -> None:
    """Make ``run_dir`` a view of a run kept in a shared ledger: its pointer and frozen config."""
    from evomerge.io.atomic import atomic_write_text

    cls = LEDGERS.get("sql")
    led = cls.open(run_dir, options, readonly=True)
    try:
        text = led.load_config()
    finally:
        led.close()
    if text is None:
        raise EvomergeError(f"the database holds no run named {led.run!r}; check --run and --ledger-url.")
    run_dir.mkdir(parents=True, exist_ok=True)
    from evomerge.search.ledgers.sql import POINTER

    if not (run_dir / POINTER).is_file():
        import yaml

        atomic_write_text(run_dir / POINTER, yaml.safe_dump(led.options.model_dump(), sort_keys=False))
    atomic_write_text(run_dir / RUN_FILE, text)
