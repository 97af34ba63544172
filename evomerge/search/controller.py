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

from evomerge.errors import EvomergeError
from evomerge.search.ledger import Ledger
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


def prepare(config: RunConfig, config_path: Path):
    """Everything a run needs, validated before any model is loaded."""
    from evomerge.eval import load_task
    from evomerge.search.optimizers import OPTIMIZERS
    from evomerge.search.space import ParameterSpace

    here = config_path.resolve().parent
    space = ParameterSpace.load(here / config.space)
    tasks, objectives = [], []
    for spec in config.objectives:
        task = load_task(
            spec.task, split=config.split, fitness=True, allow_test_split=config.allow_test_split
        )
        names = {o.name: o for o in task.objectives()}
        metric = spec.metric or next(iter(names))
        if metric not in names:
            raise RunConfigError(
                f"{config_path}: objectives: task {spec.task!r} has no objective {metric!r} "
                f"(it has {', '.join(names)})."
            )
        if task not in tasks:
            tasks.append(task)
        objectives.append(BoundObjective(f"{task.name}/{metric}", names[metric].sign, spec.weight))
    cls = OPTIMIZERS.get(config.optimizer.name)
    try:
        optimizer = cls(space.dimension, 1, config.seed, **config.optimizer.options)
    except (TypeError, ValueError) as e:
        raise RunConfigError(
            f"{config_path}: optimizer: {config.optimizer.name} cannot be built with options "
            f"{config.optimizer.options} ({e})."
        ) from None
    return space, tasks, objectives, optimizer, here


def fitness(scores: dict[str, float], objectives: list[BoundObjective]) -> float:
    """The declared scalarisation: a weighted sum of objectives turned to 'larger is better'."""
    total = sum(o.weight for o in objectives)
    return sum(o.weight * o.sign * scores[o.key] for o in objectives) / total


def run_search(
    config_path: Path,
    run_dir: Path,
    *,
    trials: int | None = None,
    log: Callable[[str], None] = print,
) -> SearchResult:
    config = RunConfig.load(config_path)
    space, tasks, objectives, optimizer, here = prepare(config, config_path)
    if (run_dir / "ledger.db").exists():
        raise EvomergeError(
            f"{run_dir} already holds a run; choose another --out (resuming a run comes next)."
        )
    from evomerge.merge.engine import resolve_model_path
    from evomerge.search.executor import InProcessExecutor

    refs = [space.base_model, *space.models]
    sources = {r: resolve_model_path(r, [here / Path(config.space).parent, here]) for r in refs}
    executor = InProcessExecutor(sources, space.base_model, tasks, device=config.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(config.model_dump_json(indent=2))
    ledger = Ledger(run_dir / "ledger.db")

    budget = trials or config.budget.trials
    deadline = time.monotonic() + config.budget.seconds if config.budget.seconds else None
    evaluated = duplicates = failed = 0
    best: tuple[float, int] | None = None
    try:
        while evaluated < budget and (deadline is None or time.monotonic() < deadline):
            suggestion = optimizer.ask()
            if suggestion is None:  # nothing in flight in a serial run, so this is a bug
                raise RuntimeError("optimizer asked to wait with no trial in flight")
            recipe = space.decode(suggestion.x)
            digest = recipe.content_hash()
            seen = ledger.find_complete(digest, config.fidelity)
            if seen is not None and seen.scores is not None:
                duplicates += 1
                optimizer.tell(suggestion.id, (fitness(seen.scores, objectives),))
                if duplicates > 10 * budget:
                    log("stopping: the optimiser keeps proposing recipes already evaluated")
                    break
                continue
            number = ledger.start(digest, [float(v) for v in suggestion.x], recipe.to_yaml(), config.fidelity)
            outcome = executor.evaluate(recipe, config.fidelity)
            ledger.finish(number, outcome.values, outcome.error)
            evaluated += 1
            if outcome.values is None:
                failed += 1
                optimizer.tell(suggestion.id, None)
                log(f"trial {number}: failed ({outcome.error})")
                continue
            f = fitness(outcome.values, objectives)
            optimizer.tell(suggestion.id, (f,))
            if best is None or f > best[0]:
                best = (f, number)
            log(
                f"trial {number}: fitness {f:.4f} ({recipe.merge_method}, {outcome.seconds:.1f}s)"
                f"  best {best[0]:.4f} (trial {best[1]})  [{evaluated}/{budget}]"
            )
    finally:
        ledger.close()
    return SearchResult(
        run_dir, evaluated, duplicates, failed, best[1] if best else None, best[0] if best else None
    )
