"""Layer-space (DFS) search spaces: Sakana's data-flow path through the layers of several models.

``M`` models of ``L`` layers each, repeated ``r`` times, give ``T = r * L * M``
slots, ordered repeat-major, then by layer index, then by model:

    r0.l0.A  r0.l0.B  r0.l1.A  r0.l1.B  ...  r1.l0.A  ...

Each slot has an inclusion gene (the slot's layer is on the path when its
value is above 0.5) and, unless ``scale`` is off, a scale gene. The path is the
included slots in slot order, so ``A0 B0 A1 B1`` and a second pass through the
network are both reachable. A slot's scale multiplies what its layer writes
into the residual stream (``o_proj`` and ``down_proj``); scales can be one per
slot, one per source layer (shared by its repeats), or one per transition
(from the previous layer on the path to this one, Sakana's scaling matrix;
``(L * M)^2`` genes). Sakana's scale multiplies the hidden state a layer
receives; this one multiplies what the layer adds to it, which a recipe
expresses exactly (``slices[].scale``) and a merged checkpoint bakes into its
weights.

Model directories (and ``merged``) share one depth, ``num_layers``; a recipe
source has its own (a path searched in an earlier stage may be longer), and
each layer index has slots for the sources that have that layer.

``first_layer_from`` / ``last_layer_from`` pin the path's first layer to layer
0 and its last to the last layer of the named model (no genes; the embedding
comes from the first layer's model and the final norm and head from the
last's). ``first_layers: N`` pins the first N layers (0 .. N-1) of that model,
a trunk the search builds on (e.g. the shared layers under experts' added
blocks). ``layer_range`` restricts the slots to source layers ``[start, end)``
(e.g. ``[1, L - 1)`` when both ends are pinned).

Decoding never makes an empty path: with no slot included and nothing pinned,
the slot with the largest inclusion value is taken. With ``max_layers``, the
included slots beyond the budget with the smallest inclusion values are
dropped (the pinned layers count against the budget).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from evomerge.recipe import Recipe
from evomerge.search.space.base import (
    Gene,
    SearchSpaceError,
    Space,
    load_context,
    register_space,
    unique_labels,
)
from evomerge.search.space.sources import (
    MERGED,
    RecipeSource,
    Run,
    SourceEntry,
    entry_depth,
    entry_key,
    entry_label,
    entry_models,
    path_recipe,
)

INCLUDED = 0.5  # an inclusion gene above this puts its slot on the path


class ScaleGenes(BaseModel):
    """The range of the scale genes, and what one gene scales."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float = Field(ge=0)
    high: float
    per: Literal["slot", "layer", "transition"] = "slot"

    @model_validator(mode="after")
    def _ordered(self) -> ScaleGenes:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class PathSpace(Space):
    """What the layer and slices kinds share: the source list, its depth, and decoding to a recipe."""

    models: list[SourceEntry] = Field(min_length=1)
    num_layers: int | None = Field(default=None, ge=1, description="Every source's depth; read when omitted.")
    max_layers: int | None = Field(default=None, ge=1)
    dtype: str = "float32"
    seed: int = 0

    @model_validator(mode="after")
    def _sources(self, info: ValidationInfo) -> PathSpace:
        keys = [entry_key(e) for e in self.models]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"models: {dup} appear more than once; list each source once")
        ctx = load_context(info)
        depths: dict[str, int] = {}  # of the model directories (a recipe source has its own)
        for e in self.models:
            if isinstance(e, RecipeSource):
                continue
            try:
                d = entry_depth(e, ctx, required=self.num_layers is None and MERGED not in self.models)
            except ValueError as err:
                raise ValueError(f"models: {err}") from None
            if d is not None:
                depths[entry_key(e)] = d
        if self.num_layers is None:
            own = [e.num_layers for e in self.models if isinstance(e, RecipeSource) and e.num_layers]
            self.num_layers = next(iter(depths.values()), own[0] if own else None)
        wrong = {k: d for k, d in depths.items() if d != self.num_layers}
        if wrong:
            listed = ", ".join(f"{k}: {d}" for k, d in wrong.items())
            raise ValueError(
                f"models: every model must have num_layers = {self.num_layers} layers, but {listed}; "
                "a path space takes models of one depth (recipe sources may differ)"
            )
        return self

    def check_standalone(self) -> str | None:
        if MERGED in self.models:
            return (
                "models: 'merged' is the parameter-space merge of a joint space; use kind: joint, "
                "or reference a finished recipe as {recipe: PATH}"
            )
        return None

    @property
    def depth(self) -> int:
        if self.num_layers is None:
            raise SearchSpaceError(
                "num_layers is unknown: set num_layers in the space, or load it with resolve=True"
            )
        return self.num_layers

    def depth_of(self, m: int) -> int:
        """The depth of source ``m``: ``num_layers``, or a recipe source's own."""
        e = self.models[m]
        if isinstance(e, RecipeSource) and e.num_layers is not None:
            return e.num_layers
        return self.depth

    def max_depth(self) -> int:
        return max(self.depth_of(m) for m in range(len(self.models)))

    def labels(self) -> list[str]:
        return unique_labels([entry_label(e) for e in self.models])

    def index_of(self, key: str, field: str) -> int:
        keys = [entry_key(e) for e in self.models]
        if key not in keys:
            raise ValueError(f"{field}: {key!r} is not one of models ({', '.join(keys)})")
        return keys.index(key)

    def source_models(self) -> list[str]:
        return list(dict.fromkeys(m for e in self._lead_first() for m in entry_models(e)))

    def _lead_first(self) -> list[str | RecipeSource]:
        return list(self.models)

    def runs(self, u: list[float]) -> list[Run]:
        """The path at unit-cube point ``u`` (already clipped and checked)."""
        raise NotImplementedError

    def decode(self, x, *, merged: Recipe | None = None) -> Recipe:
        return self.recipe_of(self.runs(self.unit(x)), merged=merged)

    def recipe_of(self, runs: list[Run], *, merged: Recipe | None = None, dtype: str | None = None,
                  seed: int | None = None) -> Recipe:
        return path_recipe(
            runs, self.models, dtype=dtype or self.dtype, seed=self.seed if seed is None else seed,
            merged=merged, merged_layers=self.num_layers,
        )


@register_space
class LayerSpace(PathSpace):
    """Sakana's data-flow (DFS) path: inclusion and scale genes over ``repeats`` x layers x models."""

    kind: Literal["layer"] = "layer"
    repeats: int = Field(default=1, ge=1)
    layer_range: tuple[int, int] | None = None
    scale: ScaleGenes | None = None
    first_layer_from: str | None = None
    first_layers: int = Field(default=1, ge=1)
    last_layer_from: str | None = None

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_off(cls, v: Any) -> Any:
        return None if v is False else v

    @model_validator(mode="after")
    def _check(self) -> LayerSpace:
        for field in ("first_layer_from", "last_layer_from"):
            key = getattr(self, field)
            if key is not None:
                self.index_of(key, field)
        if self.num_layers is not None and self.layer_range is not None:
            lo, hi = self.layer_range
            if not 0 <= lo < hi <= self.max_depth():
                raise ValueError(
                    f"layer_range: {list(self.layer_range)} must be [start, end) within the sources' "
                    f"{self.max_depth()} layers"
                )
        if self.first_layers > 1:
            if self.first_layer_from is None:
                raise ValueError("first_layers: pins layers of first_layer_from's model; name it too")
            m = self.index_of(self.first_layer_from, "first_layer_from")
            if self.num_layers is not None and self.first_layers > self.depth_of(m):
                raise ValueError(
                    f"first_layers: {self.first_layers} is more than {self.first_layer_from}'s "
                    f"{self.depth_of(m)} layers"
                )
        if self.max_layers is not None and self.max_layers < self.pinned():
            raise ValueError(f"max_layers: {self.max_layers} leaves no room for the pinned first and last layers")
        return self

    # --- the genome -----------------------------------------------------------------

    def pins(self) -> list[str]:
        return [k for k in (self.first_layer_from, self.last_layer_from) if k is not None]

    def pinned(self) -> int:
        """Layers on every path without a gene: the pinned trunk and last layer."""
        return (self.first_layers if self.first_layer_from is not None else 0) + (
            self.last_layer_from is not None
        )

    def nodes(self) -> list[tuple[int, int]]:
        """``(layer, model)`` of every source layer that gets slots, by layer then model: the
        layers in ``layer_range`` (default all) that the model has."""
        lo, hi = self.layer_range or (0, self.max_depth())
        return [
            (i, m) for i in range(lo, hi) for m in range(len(self.models)) if i < self.depth_of(m)
        ]

    def slots(self) -> list[tuple[int, int, int]]:
        """``(repeat, layer, model)`` per slot, in path order."""
        nodes = self.nodes()
        return [(k, i, m) for k in range(self.repeats) for i, m in nodes]

    def _node(self, layer: int, model: int) -> str:
        return f"{self.labels()[model]}.l{layer}"

    def scale_keys(self) -> list[str]:
        """One key per scale gene (empty when scale is off)."""
        if self.scale is None:
            return []
        labels = self.labels()
        nodes = self.nodes()
        if self.scale.per == "slot":
            return [f"r{k}.l{i}.{labels[m]}" for k, i, m in self.slots()]
        if self.scale.per == "layer":
            return [f"l{i}.{labels[m]}" for i, m in nodes]
        sources = [self._node(i, m) for i, m in nodes]
        if self.first_layer_from is not None:
            first = self._node(self.first_layers - 1, self.index_of(self.first_layer_from, "first_layer_from"))
            if first not in sources:
                sources.insert(0, first)
        return [f"{a}->{b}" for a in sources for b in (self._node(i, m) for i, m in nodes)]

    def genes(self) -> list[Gene]:
        labels = self.labels()
        out = [Gene(f"r{k}.l{i}.{labels[m]}.in") for k, i, m in self.slots()]
        if self.scale is not None:
            out += [Gene(f"scale[{key}]", self.scale.low, self.scale.high) for key in self.scale_keys()]
        return out

    def runs(self, u: list[float]) -> list[Run]:
        slots = self.slots()
        inc = u[: len(slots)]
        scales = dict(zip(self.scale_keys(), (
            self.scale.low + v * (self.scale.high - self.scale.low) for v in u[len(slots):]
        ), strict=True)) if self.scale is not None else {}
        chosen = [s for s, v in enumerate(inc) if v > INCLUDED]
        pins = self.pins()
        room = None if self.max_layers is None else self.max_layers - self.pinned()
        if room is not None and len(chosen) > room:
            keep = sorted(chosen, key=lambda s: (-inc[s], s))[:room]
            chosen = sorted(keep)
        if not chosen and not pins:  # never an empty path: the most-nearly included slot
            chosen = [max(range(len(slots)), key=lambda s: (inc[s], -s))]

        labels = self.labels()
        path: list[tuple[int, int, float | None]] = []  # (model, layer, scale)
        prev: str | None = None
        if self.first_layer_from is not None:
            m = self.index_of(self.first_layer_from, "first_layer_from")
            path += [(m, i, None) for i in range(self.first_layers)]
            prev = self._node(self.first_layers - 1, m)
        for s in chosen:
            k, i, m = slots[s]
            node = self._node(i, m)
            scale = None
            if self.scale is not None:
                if self.scale.per == "slot":
                    scale = scales[f"r{k}.l{i}.{labels[m]}"]
                elif self.scale.per == "layer":
                    scale = scales[f"l{i}.{labels[m]}"]
                elif prev is not None:  # the first layer of an unpinned path has no transition
                    scale = scales[f"{prev}->{node}"]
            path.append((m, i, scale))
            prev = node
        if self.last_layer_from is not None:
            m = self.index_of(self.last_layer_from, "last_layer_from")
            path.append((m, self.depth_of(m) - 1, None))
        return [Run(m, i, i + 1, scale) for m, i, scale in path]

    def _lead_first(self) -> list[str | RecipeSource]:
        if self.first_layer_from is None:
            return list(self.models)
        lead = self.models[self.index_of(self.first_layer_from, "first_layer_from")]
        return [lead, *(e for e in self.models if e is not lead)]
