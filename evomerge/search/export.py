"""``evomerge export``: a trial of a run as a model directory with its recipe and a card."""

from __future__ import annotations

from pathlib import Path

import yaml

from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text
from evomerge.search.controller import best_trial, fitness, load_run
from evomerge.search.run_config import RunConfig


def export_trial(
    run_dir: Path, out: Path, *, trial: int | None = None, force: bool = False, device: str = "cpu"
) -> tuple[int, Path]:
    """Merge trial ``trial`` (default: the best) of ``run_dir`` into ``out``; returns (number, out)."""
    from evomerge.merge.engine import merge_to_disk
    from evomerge.recipe import Recipe

    config, objectives, complete = load_run(run_dir)
    if trial is None:
        chosen = best_trial(complete, objectives)
    else:
        chosen = next((t for t in complete if t.candidate == trial), None)
        if chosen is None:
            numbers = ", ".join(str(t.candidate) for t in complete[:20])
            raise EvomergeError(
                f"Trial {trial} is not a complete trial of {run_dir}; complete ones: {numbers}"
                f"{' ...' if len(complete) > 20 else ''}."
            )
    recipe = Recipe.from_yaml(chosen.recipe, f"trial {chosen.candidate}")
    space_dir = Path(config.space).parent
    merge_to_disk(recipe, out, device=device, force=force, search_dirs=[space_dir, run_dir])
    card = _card(run_dir, chosen, config, fitness(chosen.scores, objectives))
    atomic_write_text(Path(out) / "README.md", card)
    return chosen.candidate, Path(out)


def _card(run_dir: Path, t, config: RunConfig, fit: float) -> str:
    fid = "all examples" if t.fidelity is None else f"{t.fidelity} examples per task"
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(t.scores.items()))
    return (
        f"# Merged model: trial {t.candidate} of an evomerge search\n\n"
        f"Found by `evomerge search` ({config.optimizer.name}, seed {config.seed}) in `{run_dir}`. "
        f"Scores on the `{config.split}` split ({fid}); scalarised fitness {fit:.4f}.\n\n"
        f"| objective | value |\n| --- | ---: |\n{rows}\n\n"
        f"The recipe is `evomerge_recipe.yaml` (and `mergekit_config.yml` where mergekit can "
        f"express it):\n\n```yaml\n{yaml.safe_dump(yaml.safe_load(t.recipe), sort_keys=False)}```\n"
    )
