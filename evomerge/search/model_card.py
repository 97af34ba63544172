"""The ``README.md`` of an exported model: a model card the Hugging Face Hub reads.

The YAML front matter carries what the Hub indexes for a merge (as mergekit's own cards do):
``base_model`` (the sources that are Hub repos), ``base_model_relation: merge``, ``tags``
(``merge``, ``evomerge``, and ``mergekit`` where ``mergekit_config.yml`` was written),
``library_name: transformers`` and a ``model-index`` with the run's objective scores (task,
metric, split; the fidelity they were scored at in the metric's ``args``).

``base_model`` takes bare repo ids only (the Hub's metadata has no place for a revision), so
the commit each Hub source was pinned to is listed in the card's text, as the exported recipes
pin it. Local sources are no Hub ids: the text names them by directory name. The card names no
absolute local path, so it can be published as it is: the run appears by its directory name, and
the recipe shown in the card names local models by directory name (the recipe files beside it
keep the absolute paths they need to merge from anywhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import CheckpointError
from evomerge.io.hub import parse_hub_id
from evomerge.io.sources import ADAPTER_SEP, split_adapter
from evomerge.recipe import Recipe

TASK_TYPE = "text-generation"  # every evomerge merge is a causal LM
HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Source:
    """One model (or adapter) a merge reads: a Hub repo at a revision, or a local directory."""

    name: str  # the Hub repo id, or the local directory's name
    revision: str | None = None  # the commit (or branch, tag) a Hub source was pinned to
    local: bool = False


@dataclass(frozen=True)
class CardFacts:
    """What the card reports about one exported trial."""

    model_name: str  # the export directory's name
    run_name: str  # the run directory's name
    trial: int
    optimizer: str
    seed: int
    split: str  # the split the search scored ("search" unless the run said otherwise)
    fidelity: int | None  # examples per task (None: all)
    fitness: float
    objectives: dict[str, float]  # "task/metric" (as the ledger names it) -> score
    scores: dict[str, float]  # every score the trial has (objectives, constraint metrics)
    recipe: Recipe  # as exported: absolute paths, Hub ids pinned
    mergekit: bool  # whether mergekit_config.yml was written beside the model
    verdict: str = ""  # the constraints sentence ("It meets ...", "It misses ..."), if any


def sources(recipe: Recipe) -> list[Source]:
    """Every model and adapter ``recipe`` reads, first mention first, each once."""
    out: dict[tuple[str, str | None, bool], Source] = {}
    for ref in recipe.referenced_models():
        for side in _sides(ref):
            out.setdefault((side.name, side.revision, side.local), side)
    return list(out.values())


def _sides(ref: str) -> list[Source]:
    """``ref`` (an exported reference: an absolute path, ``org/name@commit``, or both sides of
    ``MODEL+ADAPTER``) as sources."""
    if os.path.isabs(ref) and Path(ref).exists():  # a local directory, even one named with '+'
        return [Source(Path(ref).name, local=True)]
    try:
        parts = [p for p in split_adapter(ref) if p is not None]
    except CheckpointError:
        parts = [ref]
    out = []
    for part in parts:
        hub_id = None if os.path.isabs(part) else parse_hub_id(part)
        if hub_id is None:
            out.append(Source(Path(part).name or part, local=True))
        else:
            out.append(Source(hub_id.repo, hub_id.revision))
    return out


def display_ref(ref: str) -> str:
    """``ref`` as the card shows it: local directories by name, Hub ids as pinned."""
    sides = _sides(ref)
    shown = [s.name if s.local or s.revision is None else f"{s.name}@{s.revision}" for s in sides]
    return ADAPTER_SEP.join(shown)


def _without_local_paths(value: Any) -> Any:
    """A recipe's data with every string that names a local path replaced by ``display_ref``."""
    if isinstance(value, dict):
        return {k: _without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(v) for v in value]
    if isinstance(value, str) and any(os.path.isabs(p) for p in value.split(ADAPTER_SEP)):
        return display_ref(value)
    return value


def card_data(facts: CardFacts):
    """The front matter as ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    hub = [s.name for s in sources(facts.recipe) if not s.local]
    base_models = list(dict.fromkeys(hub))
    fidelity: int | str = "all" if facts.fidelity is None else facts.fidelity
    results = []
    for key, value in facts.objectives.items():
        task, _, metric = key.rpartition("/")
        results.append(EvalResult(
            task_type=TASK_TYPE, task_name=task, dataset_type=task, dataset_name=task,
            dataset_split=facts.split, metric_type=metric, metric_name=key, metric_value=value,
            metric_args={"fidelity": fidelity},
        ))
    tags = ["merge", "evomerge", *(["mergekit"] if facts.mergekit else [])]
    # The relation qualifies base_model: a merge of local models alone has neither.
    relation = {"base_model_relation": "merge"} if base_models else {}
    return ModelCardData(
        base_model=base_models or None, library_name="transformers", tags=tags,
        model_name=facts.model_name, eval_results=results or None, **relation,
    )


def model_card(facts: CardFacts) -> str:
    """The card's text: front matter, then what the model is, its sources, scores and recipe."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n{_body(facts)}")
    return str(card)


def _body(facts: CardFacts) -> str:
    fid = "all examples" if facts.fidelity is None else f"{facts.fidelity} examples per task"
    if facts.verdict:
        fid += f". {facts.verdict.rstrip('.')}"
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(facts.scores.items()))
    recipe = yaml.safe_dump(_without_local_paths(facts.recipe.to_dict()), sort_keys=False)
    files = "`evomerge_recipe.yaml`" + (" and `mergekit_config.yml`" if facts.mergekit else "")
    mergekit = ("" if facts.mergekit else
                " mergekit cannot express this recipe, so there is no `mergekit_config.yml`.")
    return (
        f"# {facts.model_name}\n\n"
        f"Merged model: trial {facts.trial} of an evomerge search (run `{facts.run_name}`, "
        f"{facts.optimizer}, seed {facts.seed}).\n\n"
        f"## Sources\n\n{_source_lines(facts.recipe)}\n\n"
        f"## Scores\n\n"
        f"Scores on the `{facts.split}` split ({fid}); scalarised fitness {facts.fitness:.4f}. "
        f"The search chose this model by these scores: a held-out `evomerge eval --split test` "
        f"measures how it generalises.\n\n"
        f"| objective | value |\n| --- | ---: |\n{rows}\n\n"
        f"## Recipe\n\n"
        f"The recipe is {files} in this directory; they name local models by absolute path, "
        f"so they merge from any directory of the machine that ran the search. Below, local "
        f"models are named by directory name.{mergekit}\n\n"
        f"```yaml\n{recipe}```\n"
    )


def _source_lines(recipe: Recipe) -> str:
    base = set(_sides(recipe.base_model)) if recipe.base_model else set()
    lines = []
    for s in sources(recipe):
        role = " (the base model)" if s in base else ""
        if s.local:
            lines.append(f"- `{s.name}`{role}: a local directory, not a Hub repository")
        elif s.revision:
            lines.append(f"- [{s.name}]({HUB}/{s.name}){role} at revision `{s.revision}`")
        else:
            lines.append(f"- [{s.name}]({HUB}/{s.name}){role}")
    return "\n".join(lines)
