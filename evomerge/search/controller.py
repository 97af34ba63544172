"""The search controller: config -> space -> ask -> recipe -> evaluate -> tell -> ledger.

This first version runs trials one at a time in this process. A recipe seen
before (same content hash, same fidelity) is not evaluated again: its recorded
scores are told to the optimiser. Asynchronous slots, multi-fidelity promotion
and resume build on the same loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text
from evomerge.search.ledger import Ledger, TrialRecord
from evomerge.search.run_config import RunConfig, RunConfigError


@dataclass(frozen=True)
class BoundObjective:
    key: str  # "task/metric", the name in the ledger's scores
    sign: float  # +1 maximise, -1 minimise
    weight: float


@dataclass
class SearchResult:
    run_dir: Path
    evaluated: int
    duplicates: int
    failed: int
    best_number: int | None
    best_fitness: float | None


def bind_objectives(config: RunConfig, config_path: Path):
    """The run's tasks (each loaded once, however many of its metrics count) and objectives."""
    from evomerge.eval import load_task

    tasks: dict[str, object] = {}
    objectives = []
    for spec in config.objectives:
        task = tasks.get(spec.task) or load_task(
            spec.task, split=config.split, fitness=True, allow_test_split=config.allow_test_split
        )
        tasks[spec.task] = task
        names = {o.name: o for o in task.objectives()}
        metric = spec.metric or next(iter(names))
        if metric not in names:
            raise RunConfigError(
                f"{config_path}: objectives: task {spec.task!r} has no objective {metric!r} "
                f"(it has {', '.join(names)})."
            )
        objectives.append(BoundObjective(f"{task.name}/{metric}", names[metric].sign, spec.weight))
    return list(tasks.values()), objectives


def prepare(config: RunConfig, config_path: Path):
    """Everything a run needs, validated before any model is loaded."""
    from evomerge.search.optimizers import OPTIMIZERS
    from evomerge.search.space import ParameterSpace

    here = config_path.resolve().parent
    space = ParameterSpace.load(here / config.space)
    tasks, objectives = bind_objectives(config, config_path)
    cls = OPTIMIZERS.get(config.optimizer.name)
    try:
        optimizer = cls(space.dimension, 1, config.seed, **config.optimizer.options)
    except (TypeError, ValueError) as e:
        raise RunConfigError(
            f"{config_path}: optimizer: {config.optimizer.name} cannot be built with options "
            f"{config.optimizer.options} ({e})."
        ) from None
    return space, tasks, objectives, optimizer, here


def load_run(run_dir: Path) -> tuple[RunConfig, list[BoundObjective], list[TrialRecord]]:
    """A finished or running search's config, objectives and complete trials (in order)."""
    config_path = run_dir / "run.yaml"
    if not (run_dir / "ledger.db").is_file() or not config_path.is_file():
        raise EvomergeError(f"{run_dir} is not a search run (no ledger.db / run.yaml).")
    config = RunConfig.load(config_path)
    _, objectives = bind_objectives(config, config_path)
    ledger = Ledger(run_dir / "ledger.db")
    try:
        complete = [t for t in ledger.trials("complete") if t.scores]
    finally:
        ledger.close()
    if not complete:
        raise EvomergeError(f"{run_dir} has no complete trial yet.")
    return config, objectives, complete


def best_trial(trials: list[TrialRecord], objectives: list[BoundObjective]) -> TrialRecord:
    """The fittest trial; on ties, the earliest."""
    return max(trials, key=lambda t: (fitness(t.scores, objectives), -t.number))


def fitness(scores: dict[str, float], objectives: list[BoundObjective]) -> float:
    """The declared scalarisation: a weighted sum of objectives turned to 'larger is better'."""
    total = sum(o.weight for o in objectives)
    return sum(o.weight * o.sign * scores[o.key] for o in objectives) / total


def run_search(
    config_path: Path,
    run_dir: Path,
    *,
    trials: int | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Start a run in ``run_dir``, or with ``resume`` continue the one there.

    Resuming replays the run from its seed: the optimiser proposes the same
    points again, and every recipe the ledger already finished is told its
    recorded result instead of being evaluated. The optimiser thus continues
    the very trajectory that was interrupted; only trials in flight at the
    interruption are evaluated again.
    """
    config = RunConfig.load(config_path)
    space, tasks, objectives, optimizer, here = prepare(config, config_path)
    has_run = (run_dir / "ledger.db").exists()
    if has_run and not resume:
        raise EvomergeError(
            f"{run_dir} already holds a run; continue it with `evomerge resume {run_dir}` "
            f"or choose another --out."
        )
    if resume and not has_run:
        raise EvomergeError(f"{run_dir} holds no run to resume (no ledger.db).")
    from evomerge.merge.engine import resolve_model_path
    from evomerge.search.executor import InProcessExecutor

    space_path = (here / config.space).resolve()
    refs = [space.base_model, *space.models]
    sources = {r: resolve_model_path(r, [space_path.parent, here]) for r in refs}
    executor = InProcessExecutor(sources, space.base_model, tasks, device=config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # the run keeps its own config, with paths that work from anywhere
        frozen = config.model_copy(update={"space": str(space_path)})
        atomic_write_text(run_dir / "run.yaml", yaml.safe_dump(frozen.model_dump(), sort_keys=False))
    ledger = Ledger(run_dir / "ledger.db")
    abandoned = ledger.abandon_running()
    if abandoned:
        log(f"{abandoned} trial(s) were in flight when the run stopped; they are proposed again")

    budget = trials or config.budget.trials
    deadline = time.monotonic() + config.budget.seconds if config.budget.seconds else None
    finished = len(ledger.trials("complete")) + len(ledger.trials("failed"))
    start_finished = finished
    hits = 0
    try:
        while finished < budget and (deadline is None or time.monotonic() < deadline):
            suggestion = optimizer.ask()
            if suggestion is None:  # nothing in flight in a serial run, so this is a bug
                raise RuntimeError("optimizer asked to wait with no trial in flight")
            recipe = space.decode(suggestion.x)
            digest = recipe.content_hash()
            seen = ledger.find_finished(digest, config.fidelity)
            if seen is not None:  # replayed after a resume, or the same recipe proposed again
                hits += 1
                told = None if seen.scores is None else (fitness(seen.scores, objectives),)
                optimizer.tell(suggestion.id, told)
                if hits > 10 * budget + start_finished:
                    log("stopping: the optimiser keeps proposing recipes already evaluated")
                    break
                continue
            number = ledger.start(digest, [float(v) for v in suggestion.x], recipe.to_yaml(), config.fidelity)
            outcome = executor.evaluate(recipe, config.fidelity)
            ledger.finish(number, outcome.values, outcome.error)
            finished += 1
            if outcome.values is None:
                optimizer.tell(suggestion.id, None)
                log(f"trial {number}: failed ({outcome.error})  [{finished}/{budget}]")
                continue
            f = fitness(outcome.values, objectives)
            optimizer.tell(suggestion.id, (f,))
            log(f"trial {number}: fitness {f:.4f} ({recipe.merge_method}, {outcome.seconds:.1f}s)  [{finished}/{budget}]")
        complete = [t for t in ledger.trials("complete") if t.scores]
        failed = len(ledger.trials("failed"))
    finally:
        ledger.close()
    best = best_trial(complete, objectives) if complete else None
    return SearchResult(
        run_dir,
        evaluated=finished - start_finished,
        duplicates=hits,
        failed=failed,
        best_number=best.number if best else None,
        best_fitness=fitness(best.scores, objectives) if best else None,
    )


def resume_search(run_dir: Path, *, trials: int | None = None, log: Callable[[str], None] = print) -> SearchResult:
    config_path = run_dir / "run.yaml"
    if not config_path.is_file():
        raise EvomergeError(f"{run_dir} holds no run to resume (no run.yaml).")
    return run_search(config_path, run_dir, trials=trials, resume=True, log=log)
