"""``evomerge export``: a trial of a run as a model directory with its recipe and a card.

In a run with ``constraints:`` the default trial is the best feasible one, and a
trial that misses a constraint is refused unless ``allow_infeasible`` (the CLI's
``--allow-infeasible``) says the user wants it anyway; its card then says so."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evomerge.config.run import RunConfig
from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text
from evomerge.search import task_splits
from evomerge.search.constraints import describe_violations
from evomerge.search.model_card import CardFacts, model_card
from evomerge.search.objectives import best_evaluation, fitness, unique_objectives
from evomerge.search.rundir import load_run

if TYPE_CHECKING:
    from evomerge.recipe import Recipe


def export_trial(
    run_dir: Path, out: Path, *, trial: int | None = None, force: bool = False, device: str = "cpu",
    allow_infeasible: bool = False,
) -> tuple[int, Path]:
    """Merge trial ``trial`` (default: the best feasible one) of ``run_dir`` into ``out``; returns
    (number, out). ``allow_infeasible``: export a trial that misses a constraint."""
    from evomerge.merge.engine import merge_to_disk
    from evomerge.recipe import Recipe

    config, objectives, complete, constraints = load_run(run_dir)
    if trial is None:
        chosen = best_evaluation(complete, objectives, constraints)
        if chosen is None:
            raise EvomergeError(
                f"No trial of {run_dir} meets the run's constraints "
                f"({'; '.join(str(c) for c in constraints)}), so it has no best trial to export. "
                f"Pass --trial N --allow-infeasible to export one anyway, or resume the search "
                f"with a larger budget (`evomerge resume {run_dir} --trials N`)."
            )
    else:
        chosen = next((t for t in complete if t.trial == trial), None)
        if chosen is None:
            numbers = ", ".join(str(t.trial) for t in complete[:20])
            raise EvomergeError(
                f"Trial {trial} is not a complete trial of {run_dir}; complete ones: {numbers}"
                f"{' ...' if len(complete) > 20 else ''}. Pass one of them to --trial (`evomerge "
                f"front {run_dir}` lists the best), or leave --trial out to export the best."
            )
    missed = describe_violations(chosen.scores, constraints)
    if missed and not allow_infeasible:
        raise EvomergeError(
            f"Trial {chosen.trial} of {run_dir} is infeasible: {missed}. Pass --allow-infeasible to "
            f"export it anyway, or leave --trial out to export the best feasible trial."
        )
    recipe = Recipe.from_yaml(chosen.recipe, f"trial {chosen.trial}")
    # The ledger keeps the recipe as searched (paths relative to the space file's folder, which
    # its hash covers); the exported files get absolute paths, so they merge from any directory,
    # and Hub ids pinned to the commit the run searched (never a cache path).
    recipe = _portable_model_refs(recipe, run_dir, [Path(config.space).parent, run_dir])
    if config.dtype and recipe.out_dtype is None:
        # The workers stored each candidate in the run's dtype (a float32 merge rounded once):
        # the exported model, and mergekit's from the exported config, are the one scored.
        recipe = Recipe.from_dict({**recipe.to_dict(), "out_dtype": config.dtype}, f"trial {chosen.trial}")
    merge_to_disk(recipe, out, device=device, force=force)
    card = model_card(_card_facts(run_dir, Path(out), chosen, config, objectives, recipe, missed))
    atomic_write_text(Path(out) / "README.md", card)
    splits = task_splits.read_record(run_dir)
    if splits:  # which documents the search scored: `evomerge eval` will not report on them
        atomic_write_text(Path(out) / task_splits.EXPORTED, json.dumps(splits, indent=2, sort_keys=True) + "\n")
    return chosen.trial, Path(out)


def _portable_model_refs(recipe: Recipe, run_dir: Path, search_dirs: Sequence[Path]) -> Recipe:
    """``recipe`` with every model reference (``model``, ``base_model``, top level and in slices,
    and a ``tokenizer_source`` naming a model) as ``pinned_ref`` gives it: an absolute path, or a
    Hub id at the commit the run resolved it to (recorded in its ``sources.json``)."""
    from evomerge.io.sources import pinned_ref, resolve_sources
    from evomerge.search.fingerprints import recorded_dirs

    refs = recipe.referenced_models()
    dirs = recorded_dirs(run_dir)
    dirs.update(resolve_sources([r for r in refs if r not in dirs], search_dirs))
    return recipe.with_models_renamed({ref: pinned_ref(ref, dirs) for ref in refs}, "the exported recipe")


def _card_facts(run_dir: Path, out: Path, t, config: RunConfig, objectives, recipe: Recipe,
                missed: str = "") -> CardFacts:
    verdict = ""
    if config.constraints:
        bounds = "; ".join(str(c) for c in config.constraints)
        verdict = f"It misses the run's constraints: {missed}." if missed else f"It meets the run's constraints ({bounds})."
    return CardFacts(
        model_name=Path(out).resolve().name, run_name=Path(run_dir).resolve().name, trial=t.trial,
        optimizer=config.optimizer.name, seed=config.seed, split=config.split, fidelity=t.fidelity,
        fitness=fitness(t.scores, objectives), scores=dict(t.scores), recipe=recipe,
        objectives={o.key: t.scores[o.key] for o in unique_objectives(objectives)},
        mergekit=(Path(out) / "mergekit_config.yml").is_file(), verdict=verdict,
    )
