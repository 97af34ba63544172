"""Parameter-space (PS) search spaces: which merge of whole models, with which values.

A space says which models are merged onto which base, which methods may be
chosen, which parameters are searched and in what ranges, and how finely: one
value per model for the whole network, per group of ``k`` layers, and/or per
module filter (``self_attn``, ``mlp``, the rest). ``genes()`` lists the
coordinates of the unit cube an optimiser searches; ``decode(x)`` turns a point
of it into a ``Recipe``. Every optimiser works on the same cube, so the space,
not the optimiser, knows what a merge is.

Layer groups become slices of the recipe (exact per-group values, which
mergekit's interpolated gradients cannot express); filters become
``{filter, value}`` parameter lists.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from evomerge.recipe import Recipe
from evomerge.search.space.base import (
    Gene,
    Range,
    Space,
    load_context,
    read_depth,
    register_space,
    short_name,
)

OTHER = "other"  # the filter slot for tensors no named filter matches


class Granularity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    layers_per_group: int | None = Field(default=None, ge=1, description="None: one group for all layers.")
    filters: list[str] = Field(default_factory=list, description="e.g. [self_attn, mlp]; the rest is 'other'.")


# Which searched parameters each method takes (the others are not genes for it).
METHOD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "dare_linear": ("weight", "density"),
    "breadcrumbs": ("weight", "density", "gamma"),
    "breadcrumbs_ties": ("weight", "density", "gamma"),
    "della": ("weight", "density", "epsilon"),
    "della_linear": ("weight", "density", "epsilon"),
}

# The values a searched parameter may take: a range outside them decodes to recipes the methods
# refuse (or, worse, silently clip), so the space is refused when it is read. Weights may be
# negative (task negation).
PARAMETER_BOUNDS: dict[str, tuple[float, float]] = {
    "density": (0.0, 1.0),  # the fraction of each task vector kept
    "gamma": (0.0, 1.0),  # breadcrumbs: the fraction of the largest entries dropped
    "epsilon": (0.0, 1.0),  # della: the spread of keep probabilities around density
}


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@register_space
class ParameterSpace(Space):
    """A parameter-space (PS) search space over merges of ``models`` onto ``base_model``."""

    kind: Literal["parameter"] = "parameter"
    base_model: str
    models: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    parameters: dict[str, Range]
    granularity: Granularity = Granularity()
    num_layers: int | None = Field(default=None, ge=1, description="Read from the base model if omitted.")
    dtype: str = "float32"
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _read_depth(cls, data: Any, info: ValidationInfo) -> Any:
        ctx = load_context(info)
        if (
            ctx.resolve
            and isinstance(data, dict)
            and isinstance(data.get("granularity"), dict)
            and data["granularity"].get("layers_per_group")
            and data.get("num_layers") is None
            and isinstance(data.get("base_model"), str)
        ):
            try:
                data = {**data, "num_layers": read_depth(data["base_model"], ctx.dirs)}
            except ValueError as e:
                raise ValueError(f"num_layers: {e}") from None
        return data

    @model_validator(mode="after")
    def _check(self) -> ParameterSpace:
        unknown = [m for m in self.methods if m not in METHOD_PARAMETERS]
        if unknown:
            raise ValueError(
                f"methods: {unknown[0]!r}{_did_you_mean(unknown[0], METHOD_PARAMETERS)} cannot be "
                f"searched in parameter space; choose from {', '.join(METHOD_PARAMETERS)}"
            )
        if "weight" not in self.parameters:
            raise ValueError("parameters needs a 'weight' range")
        used = {p for m in self.methods for p in METHOD_PARAMETERS[m]}
        known = {p for ps in METHOD_PARAMETERS.values() for p in ps}
        for name in sorted(set(self.parameters) - known):
            raise ValueError(
                f"parameters.{name}: no method takes a parameter {name!r}{_did_you_mean(name, used)}; "
                f"the methods {self.methods} take {', '.join(sorted(used))}"
            )
        idle = sorted(set(self.parameters) - used)
        if idle:
            raise ValueError(
                f"parameters {idle} are taken by none of the methods {self.methods}; remove them "
                f"or add a method that takes them"
            )
        for name, (low, high) in PARAMETER_BOUNDS.items():
            r = self.parameters.get(name)
            if r is not None and (r.low < low or r.high > high):
                raise ValueError(
                    f"parameters.{name}: the range [{r.low:g}, {r.high:g}] goes outside [{low:g}, {high:g}], "
                    f"the values {name} can take; narrow it to lie within [{low:g}, {high:g}]"
                )
        if len(set(self.models)) != len(self.models) or self.base_model in self.models:
            raise ValueError("models must be distinct and must not include base_model")
        if self.granularity.layers_per_group and self.num_layers is None:
            raise ValueError("layers_per_group needs num_layers (set it, or load with resolve=True)")
        return self

    # --- the genome -----------------------------------------------------------------

    def groups(self) -> list[tuple[int, int]]:
        """Layer ranges ``[start, end)`` that get their own values (one if no grouping)."""
        k = self.granularity.layers_per_group
        if not k:
            return [(0, self.num_layers or 0)]
        n = self.num_layers or 0
        return [(s, min(s + k, n)) for s in range(0, n, k)]

    def slots(self) -> list[str]:
        return [*self.granularity.filters, OTHER] if self.granularity.filters else [OTHER]

    def genes(self) -> list[Gene]:
        out: list[Gene] = []
        if len(self.methods) > 1:
            out.append(Gene("method", choices=tuple(self.methods)))
        for g, _ in enumerate(self.groups()):
            for model in self.models:
                for param in sorted(self.parameters):
                    for slot in self.slots():
                        r = self.parameters[param]
                        out.append(Gene(self._gene_name(model, param, g, slot), r.low, r.high))
        return out

    def source_models(self) -> list[str]:
        return [self.base_model, *self.models]

    def decode(self, x) -> Recipe:
        """The recipe at point ``x`` of the unit cube (values outside [0, 1] are clipped)."""
        genes = self.genes()
        x = self.unit(x, len(genes))
        values = {g.name: g.value(v) for g, v in zip(genes, x, strict=True)}
        method = values.pop("method", self.methods[0])
        wanted = METHOD_PARAMETERS[method]

        def params(model: str, g: int) -> dict:
            out = {}
            for param in sorted(p for p in self.parameters if p in wanted):
                per_slot = [(s, values[self._gene_name(model, param, g, s)]) for s in self.slots()]
                if len(per_slot) == 1:
                    out[param] = round(per_slot[0][1], 6)
                else:
                    out[param] = [
                        {"filter": s, "value": round(v, 6)} if s != OTHER else {"value": round(v, 6)}
                        for s, v in per_slot
                    ]
            return out

        common = {"merge_method": method, "dtype": self.dtype, "seed": self.seed}
        uses_base = method != "linear"  # linear averages the models; the others add deltas to the base
        if uses_base:
            common["base_model"] = self.base_model
        groups = self.groups()
        if len(groups) == 1:
            data = {**common, "models": [{"model": m, "parameters": params(m, 0)} for m in self.models]}
        else:
            base_src = lambda s, e: [{"model": self.base_model, "layer_range": [s, e]}] if uses_base else []  # noqa: E731
            data = {
                **common,
                "slices": [
                    {
                        "sources": [
                            *base_src(s, e),
                            *(
                                {"model": m, "layer_range": [s, e], "parameters": params(m, g)}
                                for m in self.models
                            ),
                        ]
                    }
                    for g, (s, e) in enumerate(groups)
                ],
            }
        return Recipe.from_dict(data, "search space")

    def _gene_name(self, model: str, param: str, group: int, slot: str) -> str:
        name = f"{short_name(model)}.{param}"
        if self.granularity.layers_per_group:
            name += f"[g{group}]"
        if self.granularity.filters:
            name += f"[{slot}]"
        return name
