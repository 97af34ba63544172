"""What a search bought on the toy zoo: its best recipe against the plain merges and chance.

Scores on the test split, next to each other: the base, every expert, the equal-weight average,
plain task arithmetic (weights 1), the run's best trial, and recipes drawn uniformly from the
run's own space. ``landscape_checks`` are the zoo issue's targets for that comparison. Used by
``benchmarks/zoo_landscape.py`` (over zoo seeds) and by the README walk-through test (on the
quickstart a newcomer runs).
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

SKILLS = ("addition", "reversal", "sorting")


def mean_score(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def score_landscape(
    zoo: Path, run_dir: Path, n_random: int = 20, seed: int = 0, *, plain: bool = True
) -> dict:
    """Test-split exact match of the zoo's models, the plain merges, the run's best recipe and
    ``n_random`` recipes drawn (seeded) from the run's space: {"rows": {name: {skill: score}},
    "random_means": [...], "best_recipe": {...}}. ``plain=False``: the best recipe and the
    random ones only (rows: ``search_best``)."""
    from evomerge.eval import load_task
    from evomerge.io.hf import load_causal_lm
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.merge.resident import fit_layers
    from evomerge.recipe import Recipe
    from evomerge.search.objectives import best_evaluation
    from evomerge.search.rundir import RUN_FILE, load_run, resolve_sources, space_path
    from evomerge.search.space.base import load_space
    from evomerge.zoo.report import merge_recipe

    zoo = Path(zoo).resolve()
    config, objectives, complete, constraints = load_run(run_dir)
    chosen = best_evaluation(complete, objectives, constraints)
    if chosen is None:
        from evomerge.errors import EvomergeError

        raise EvomergeError(f"{run_dir}: no trial meets the run's constraints; there is no best recipe to compare.")
    best = Recipe.from_yaml(chosen.recipe, "best trial")
    frozen = Path(run_dir) / RUN_FILE
    space = load_space(space_path(config, frozen))

    names = ["base", *SKILLS]
    # The run's recipes name models as its space does (paths relative to the space file).
    sources = resolve_sources(space, config, frozen) | {str(zoo / n): zoo / n for n in names}
    merger = InMemoryMerger(sources)
    model, tokenizer = load_causal_lm(zoo / "base")
    tasks = {s: load_task(s, split="test") for s in SKILLS}

    def score(m) -> dict[str, float]:
        return {s: tasks[s].evaluate(m, tokenizer).values["exact_match"] for s in SKILLS}

    def merged(recipe: Recipe) -> dict[str, float]:
        plan = merger.plan(recipe)
        if plan.num_layers != model.config.num_hidden_layers:
            fit_layers(model, plan.num_layers)
        merger.merge(recipe, into=model, plan=plan)
        return score(model)

    rows = {}
    if plain:
        rows = {n: score(load_causal_lm(zoo / n)[0]) for n in names}
        experts = [str(zoo / s) for s in SKILLS]
        rows["average"] = merged(merge_recipe("linear", str(zoo / "base"), experts, [1.0] * len(SKILLS)))
        rows["task_arithmetic"] = merged(
            merge_recipe("task_arithmetic", str(zoo / "base"), experts, [1.0] * len(SKILLS)))
    rows["search_best"] = merged(best)
    rng = random.Random(seed)
    randoms = [mean_score(merged(space.decode([rng.random() for _ in space.genes()]))) for _ in range(n_random)]
    return {"rows": rows, "random_means": randoms, "best_recipe": best.to_dict()}


def zoo_checks(result: dict) -> dict[str, bool]:
    """The zoo's own targets: every expert >= 0.9 on its skill, the base <= 0.3 on each."""
    rows = result["rows"]
    return {
        "every expert >= 0.9 on its skill": all(rows[s][s] >= 0.9 for s in SKILLS),
        "base <= 0.3 on every skill": all(rows["base"][s] <= 0.3 for s in SKILLS),
    }


def landscape_checks(result: dict) -> dict[str, bool]:
    """The zoo issue's targets: the best recipe keeps >= 0.7 of each expert's own skill score,
    beats the average and task arithmetic by >= 0.05 on the mean, and the random recipes'
    median is >= 0.1 below it."""
    rows = result["rows"]
    best = rows["search_best"]
    return {
        "keeps >= 0.7 of each expert": all(best[s] >= 0.7 * rows[s][s] for s in SKILLS),
        "beats average by >= 0.05": mean_score(best) >= mean_score(rows["average"]) + 0.05,
        "beats task arithmetic by >= 0.05": mean_score(best) >= mean_score(rows["task_arithmetic"]) + 0.05,
        "random median >= 0.1 below": statistics.median(result["random_means"]) <= mean_score(best) - 0.1,
    }


def all_checks(result: dict) -> dict[str, bool]:
    """The zoo's and the landscape's checks together, in that order."""
    return zoo_checks(result) | landscape_checks(result)
