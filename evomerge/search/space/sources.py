"""The sources a layer path is built from, and turning a path into a recipe.

A path source is one of:

* a model directory (``../zoo/reversal``): its layers are copied (passthrough);
* ``merged``: in a joint space, the parameter-space merge decoded from the same
  genome; its layer ``i`` is layer ``i`` of that merge, merged on the fly;
* ``{recipe: PATH}``: a finished recipe (e.g. the ``evomerge_recipe.yaml`` that
  ``evomerge export`` writes), used like ``merged`` - the sequential PS -> DFS
  pipeline. The recipe may also be given inline as a mapping.

``layer_of_recipe`` is the one place that turns "layer ``i`` of that recipe"
into a one-layer slice; ``path_recipe`` turns a decoded path into a recipe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    model_validator,
)

from evomerge.errors import EvomergeError
from evomerge.recipe import ConditionalParameter, Parameters, Recipe, gradient_at, gradient_position
from evomerge.search.space.base import (
    UNION_TAGS,
    LoadContext,
    SearchSpaceError,
    load_context,
    read_depth,
    short_name,
)
from evomerge.validation import StrictModel

MERGED = "merged"  # the parameter-space merge of a joint space


class RecipeSource(StrictModel):
    """``{recipe: PATH}`` (or an inline recipe mapping): a finished merge used as a path source."""
    recipe: Union[str, dict[str, Any]]
    num_layers: int | None = Field(default=None, ge=1, description="Its depth; read when omitted.")
    _loaded: Recipe | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read(self, info: ValidationInfo) -> RecipeSource:
        ctx = load_context(info)
        if isinstance(self.recipe, dict):
            self._loaded = _parse(lambda: Recipe.from_dict(self.recipe, "the inline recipe"))
        elif ctx.read_recipes:
            path = Path(self.recipe).expanduser()
            if not path.is_absolute() and ctx.where is not None:
                path = ctx.where / path
            self._loaded = _parse(lambda: Recipe.load(path))
            if ctx.resolve:
                self._loaded = _rebase(self._loaded, path.parent, ctx)
        if self._loaded is not None and ctx.resolve:
            depth = recipe_depth(self._loaded, ctx.dirs)
            if self.num_layers is not None and self.num_layers != depth:
                raise ValueError(f"num_layers is {self.num_layers} but the recipe makes {depth} layers")
            self.num_layers = depth
        elif self._loaded is not None and self._loaded.slices is not None:
            self.num_layers = self.num_layers or sum(s.num_layers for s in self._loaded.slices)
        return self

    @property
    def loaded(self) -> Recipe:
        if self._loaded is None:
            raise SearchSpaceError(
                f"the recipe {self.recipe!r} was not read; load the space with resolve=True to decode it"
            )
        return self._loaded

    @property
    def label(self) -> str:
        if isinstance(self.recipe, dict):
            return "recipe"
        p = Path(self.recipe)
        return p.parent.name if p.stem in ("evomerge_recipe", "recipe") and p.parent.name else p.stem


def _parse(load) -> Recipe:
    try:
        return load()
    except EvomergeError as e:
        raise ValueError(str(e)) from None


def _rebase(recipe: Recipe, recipe_dir: Path, ctx: LoadContext) -> Recipe:
    """Rewrite the recipe's model references that resolve only from its own folder so
    that they resolve from the space's folder (where a search looks them up)."""
    from evomerge.io.sources import ADAPTER_SEP, resolves_whole, split_adapter

    moved: dict[str, str] = {}
    for ref in recipe.referenced_models():
        if resolves_whole(ref, ctx.dirs):
            continue
        model, adapter = split_adapter(ref)
        parts = [(model, False)] + ([(adapter, True)] if adapter is not None else [])
        rebased = [_rebase_part(part, is_adapter, recipe_dir, ctx) for part, is_adapter in parts]
        if rebased != [p for p, _ in parts]:
            moved[ref] = ADAPTER_SEP.join(rebased)
    if not moved:
        return recipe
    return recipe.with_models_renamed(moved, "the rebased recipe")


def _rebase_part(ref: str, adapter: bool, recipe_dir: Path, ctx: LoadContext) -> str:
    """One side of a reference, relative to the space's folder if it resolves only from the
    recipe's own (a Hub id resolves from anywhere and stays as it is)."""
    from evomerge.io.sources import resolve_part

    try:
        resolve_part(ref, ctx.dirs, adapter=adapter)
        return ref
    except EvomergeError as e:
        first = e
    try:
        found = resolve_part(ref, [recipe_dir], adapter=adapter)
    except EvomergeError:
        raise ValueError(
            f"its {'adapter' if adapter else 'model'} {ref!r} is found neither from {recipe_dir} "
            f"nor from {ctx.where} ({first})"
        ) from None
    return os.path.relpath(os.path.abspath(found), os.path.abspath(ctx.where or Path.cwd()))


def recipe_depth(recipe: Recipe, dirs: Sequence[Path] = ()) -> int:
    """How many layers ``recipe`` makes (a ``models:`` recipe: its base model's depth, read)."""
    if recipe.slices is not None:
        return sum(s.num_layers for s in recipe.slices)
    return read_depth(recipe.base_model or recipe.models[0].model, dirs)


def _entry_tag(v: Any) -> str:
    return "recipe-source" if isinstance(v, (dict, RecipeSource)) else "model-path"


UNION_TAGS.update({"recipe-source", "model-path"})

# One entry of a layer space's ``models:``: a model directory, ``merged``, or ``{recipe: ...}``.
SourceEntry = Annotated[
    Union[Annotated[str, Tag("model-path")], Annotated[RecipeSource, Tag("recipe-source")]],
    Discriminator(_entry_tag),
]


def entry_key(entry: str | RecipeSource) -> str:
    """How ``first_layer_from`` and friends name an entry: its path (or ``merged``)."""
    if isinstance(entry, RecipeSource):
        return entry.recipe if isinstance(entry.recipe, str) else "recipe"
    return entry


def entry_label(entry: str | RecipeSource) -> str:
    return entry.label if isinstance(entry, RecipeSource) else short_name(entry)


def entry_models(entry: str | RecipeSource) -> list[str]:
    """The model references an entry reads (``merged`` reads the parameter space's: none here)."""
    if isinstance(entry, RecipeSource):
        return entry.loaded.referenced_models() if entry._loaded is not None else []
    return [] if entry == MERGED else [entry]


def entry_depth(entry: str | RecipeSource, ctx: LoadContext, *, required: bool) -> int | None:
    """The entry's depth if it can be known now (None: ``merged``, not resolving, or - unless
    ``required`` - a model directory that is not here)."""
    if isinstance(entry, RecipeSource):
        return entry.num_layers
    if entry == MERGED or not ctx.resolve:
        return None
    try:
        return read_depth(entry, ctx.dirs)
    except ValueError:
        if required:
            raise
        return None


# --- one layer of a recipe ----------------------------------------------------------------


def layer_of_recipe(recipe: Recipe, layer: int, num_layers: int | None = None) -> dict[str, Any]:
    """Layer ``layer`` of ``recipe``'s output as a one-layer slice (a dict for ``Recipe.slices``).

    The slice merges, for that one layer, exactly what the recipe merges there:
    its method, base model, every source's layer and parameters. Gradients
    (lists of numbers) are evaluated where the recipe's plan would evaluate them,
    and the recipe's global parameters join the slice's, so the plan resolves
    the same values. ``num_layers`` is needed only for a ``models:`` recipe with
    gradient parameters (the position of the layer in the network).
    """
    from evomerge.merge.registry import BasePolicy, get_method

    if recipe.models is not None:
        t = None
        if num_layers is not None:
            if not 0 <= layer < num_layers:
                raise SearchSpaceError(f"layer {layer} is outside the recipe's {num_layers} layers")
            t = gradient_position(layer, num_layers)
        sources: list[dict[str, Any]] = []
        names = [m.model for m in recipe.models]
        base = recipe.base_model
        policy = get_method(recipe.merge_method).base
        if base and base not in names and policy is not BasePolicy.INPUT:
            sources.append({"model": base, "layer_range": [layer, layer + 1]})
        for m in recipe.models:
            src: dict[str, Any] = {"model": m.model, "layer_range": [layer, layer + 1]}
            if m.parameters:
                src["parameters"] = _params_at(m.parameters, t)
            sources.append(src)
        out: dict[str, Any] = {"sources": sources, "merge_method": recipe.merge_method}
        if base:
            out["base_model"] = base
        params = _params_at(recipe.parameters, t)
        if params:
            out["parameters"] = params
        return out

    start = 0
    for s in recipe.slices or []:
        n = s.num_layers
        if start <= layer < start + n:
            j = layer - start
            t = gradient_position(j, n)
            sources = []
            for src in s.sources:
                d: dict[str, Any] = {"model": src.model, "layer_range": [src.layer_range[0] + j, src.layer_range[0] + j + 1]}
                if src.parameters:
                    d["parameters"] = _params_at(src.parameters, t)
                sources.append(d)
            out = {"sources": sources, "merge_method": s.merge_method or recipe.merge_method}
            if s.base_model or recipe.base_model:
                out["base_model"] = s.base_model or recipe.base_model
            params = _fall_through(_params_at(s.parameters, t), _params_at(recipe.parameters, t))
            if params:
                out["parameters"] = params
            if s.scale is not None:
                out["scale"] = s.scale
            return out
        start += n
    raise SearchSpaceError(f"layer {layer} is outside the recipe's {start} layers")


def _params_at(params: Parameters | None, t: float | None) -> dict[str, Any]:
    return {k: _setting_at(v, t) for k, v in (params or {}).items()}


def _setting_at(setting: Any, t: float | None) -> Any:
    """A parameter setting with its gradients read at ``t`` (``gradient_at``, as the plan
    reads them); filter lists are kept, each value read at ``t``."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(e, ConditionalParameter) for e in setting):
        return [
            {"value": _setting_at(c.value, t)} if c.filter is None else {"filter": c.filter, "value": _setting_at(c.value, t)}
            for c in setting
        ]
    if isinstance(setting, list) and setting:
        if t is None:
            raise SearchSpaceError(
                "the recipe has gradient parameters; give the recipe source's num_layers (or load with resolve=True)"
            )
        return gradient_at(setting, t)
    return setting


def _fall_through(inner: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
    """One parameter scope with ``inner``'s values first and ``outer``'s where the plan
    would fall through to it (a filter list with no match for a tensor)."""
    out = dict(outer)
    for k, v in inner.items():
        if k in out and _is_conditional(v):
            rest = out[k] if _is_conditional(out[k]) else [{"value": out[k]}]
            out[k] = [*v, *rest]
        else:
            out[k] = v
    return out


def _is_conditional(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(e, dict) and "value" in e for e in v)


# --- a decoded path ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Layers ``[start, end)`` of path source ``source`` (an index into the space's models)."""

    source: int
    start: int
    end: int
    scale: float | None = None


def path_recipe(
    runs: Sequence[Run],
    entries: Sequence[str | RecipeSource],
    *,
    dtype: str,
    seed: int,
    merged: Recipe | None = None,
    merged_layers: int | None = None,
) -> Recipe:
    """The layer-space recipe of a decoded path: copied runs of model layers, and one
    merged slice per layer taken from ``merged`` or a recipe source."""
    slices: list[dict[str, Any]] = []
    last: tuple[str, int, float | None] | None = None  # model, end, scale of the last copied slice
    for run in runs:
        entry = entries[run.source]
        scale = None if run.scale is None else round(run.scale, 6)
        if isinstance(entry, str) and entry != MERGED:
            if last is not None and last == (entry, run.start, scale):
                slices[-1]["sources"][0]["layer_range"][1] = run.end  # contiguous: one slice
            else:
                s: dict[str, Any] = {"sources": [{"model": entry, "layer_range": [run.start, run.end]}]}
                if scale is not None:
                    s["scale"] = scale
                slices.append(s)
            last = (entry, run.end, scale)
            continue
        last = None
        if entry == MERGED:
            if merged is None:
                raise SearchSpaceError(
                    "'merged' is the parameter-space merge of a joint space; this space has none "
                    "(use kind: joint, or a finished recipe as {recipe: PATH})"
                )
            recipe, depth = merged, merged_layers
        else:
            recipe, depth = entry.loaded, entry.num_layers
        for layer in range(run.start, run.end):
            s = layer_of_recipe(recipe, layer, depth)
            if scale is not None:
                s["scale"] = round(scale * s.get("scale", 1.0), 6)
            slices.append(s)
    data = {"merge_method": "passthrough", "slices": slices, "dtype": dtype, "seed": seed}
    return Recipe.from_dict(data, "decoded layer path")
