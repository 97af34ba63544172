"""An evomerge search space as a Tune search space, and a Tune config back to a recipe.

Each gene becomes one entry of the Tune config, in the gene's own units: a range
``tune.uniform(low, high)``, an integer gene ``tune.randint(low, high + 1)``, a categorical gene
(a merge method, a slice's model) ``tune.choice(choices)``. Any Tune searcher (OptunaSearch,
HyperOpt, random) then searches evomerge's space, and the trainable turns the config it is given
back into the recipe: each value to its unit-cube coordinate (``Gene.encode``), the genome to a
recipe (``Space.decode``), as evomerge's own optimisers reach it.

Config keys are the gene names (``addition.weight[g0][mlp]``) with ``/`` written ``:``: Tune
joins nested keys with ``/``, and OptunaSearch refuses keys that contain it.
``pbt_mutations`` gives the same genes in the form PBT's ``hyperparam_mutations`` takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ray import tune

from evomerge.errors import EvomergeError
from evomerge.recipe import Recipe
from evomerge.search.space import Gene, Space


def gene_key(gene: Gene) -> str:
    """The gene's key in a Tune config."""
    return gene.name.replace("/", ":")


def _keys(space: Space) -> list[tuple[str, Gene]]:
    pairs = [(gene_key(g), g) for g in space.genes()]
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise EvomergeError(
                f"the search space has two genes named {key!r} once '/' is written ':' for Tune; "
                f"rename one of the models or groups they come from."
            )
        seen.add(key)
    return pairs


def _domain(gene: Gene):
    if gene.choices:
        return tune.choice(list(gene.choices))
    if gene.integer:
        return tune.randint(int(gene.low), int(gene.high) + 1)  # Tune's upper bound is exclusive
    return tune.uniform(gene.low, gene.high)


def tune_search_space(space: Space) -> dict:
    """``param_space`` for ``tune.Tuner``: one Tune domain per gene of ``space``."""
    return {key: _domain(g) for key, g in _keys(space)}


def pbt_mutations(space: Space) -> dict:
    """``hyperparam_mutations`` for ``PopulationBasedTraining``: PBT multiplies a numeric value
    by 0.8 or 1.2 and picks a neighbour from a list, so integer and categorical genes are given
    as lists of their values, ranges as their domains (a perturbed value past a bound is
    clipped to it when the trial decodes its config)."""
    out = {}
    for key, g in _keys(space):
        if g.choices:
            out[key] = list(g.choices)
        elif g.integer:
            out[key] = list(range(int(g.low), int(g.high) + 1))
        else:
            out[key] = _domain(g)
    return out


def config_of(space: Space, x: Sequence[float]) -> dict:
    """The Tune config of the unit-cube point ``x`` (what a searcher wrapping an evomerge
    optimiser suggests)."""
    values = space.unit(x)
    return {key: _plain(g.value(u)) for (key, g), u in zip(_keys(space), values, strict=True)}


def _plain(value):
    """numpy scalars as Python's, so configs stay JSON (Tune's experiment state)."""
    return value.item() if isinstance(value, np.generic) else value


def genome_of(space: Space, config: Mapping) -> np.ndarray:
    """The unit-cube point of a Tune config; keys that are not genes (constants the user added
    to ``param_space``) are ignored, a missing or bad gene is an error naming it."""
    x = []
    for key, g in _keys(space):
        if key not in config:
            raise EvomergeError(
                f"the Tune config has no value for gene {key!r}; build param_space with "
                f"tune_search_space(run.space), or give every gene of the space a value."
            )
        value = _plain(config[key])
        if not g.choices and not g.integer and isinstance(value, float):
            value = min(max(value, g.low), g.high)  # past a bound by an ulp, or by PBT's perturbation
        try:
            x.append(g.encode(value))
        except ValueError as e:
            raise EvomergeError(f"the Tune config's value for gene {key!r} does not fit it: {e}.") from None
    return np.asarray(x, dtype=float)


def recipe_of(space: Space, config: Mapping) -> Recipe:
    """The recipe a Tune config describes, as the trial merged it (model references as the space
    names them, paths relative to the space file's folder)."""
    return space.decode(genome_of(space, config))


def portable_recipe(run, config: Mapping) -> Recipe:
    """The recipe of a Tune config of ``run`` (a ``TuneRun``) to keep: every model reference an
    absolute path or a Hub id pinned to the commit the run resolved, as ``evomerge export``
    writes recipes, so ``evomerge merge`` reads it from any directory."""
    from evomerge.io.sources import pinned_ref

    recipe = recipe_of(run.space, config)
    sources = run.worker.sources
    names = {ref: pinned_ref(ref, sources) for ref in recipe.referenced_models()}
    return recipe.with_models_renamed(names, "the Tune trial's recipe")
