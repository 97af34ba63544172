"""Declarative parameter-space search spaces and their genome codec.

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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import EvomergeError, field_problems
from evomerge.recipe import Recipe

OTHER = "other"  # the filter slot for tensors no named filter matches


class SearchSpaceError(EvomergeError):
    pass


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


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


class ParameterSpace(BaseModel):
    """A parameter-space (PS) search space over merges of ``models`` onto ``base_model``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["parameter"] = "parameter"
    base_model: str
    models: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    parameters: dict[str, Range]
    granularity: Granularity = Granularity()
    num_layers: int | None = Field(default=None, ge=1, description="Read from the base model if omitted.")
    dtype: str = "float32"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ParameterSpace:
        unknown = [m for m in self.methods if m not in METHOD_PARAMETERS]
        if unknown:
            raise ValueError(
                f"methods {unknown} cannot be searched in parameter space; "
                f"choose from {', '.join(METHOD_PARAMETERS)}"
            )
        if "weight" not in self.parameters:
            raise ValueError("parameters needs a 'weight' range")
        used = {p for m in self.methods for p in METHOD_PARAMETERS[m]}
        idle = sorted(set(self.parameters) - used)
        if idle:
            raise ValueError(f"parameters {idle} are taken by none of the methods {self.methods}")
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
                        out.append(Gene(_gene_name(model, param, g, slot, self), r.low, r.high))
        return out

    @property
    def dimension(self) -> int:
        return len(self.genes())

    def decode(self, x) -> Recipe:
        """The recipe at point ``x`` of the unit cube (values outside [0, 1] are clipped)."""
        genes = self.genes()
        x = [min(1.0, max(0.0, float(v))) for v in x]
        if len(x) != len(genes):
            raise SearchSpaceError(f"genome has {len(x)} values; this space has {len(genes)} genes")
        values = {g.name: g.value(v) for g, v in zip(genes, x, strict=True)}
        method = values.pop("method", self.methods[0])
        wanted = METHOD_PARAMETERS[method]

        def params(model: str, g: int) -> dict:
            out = {}
            for param in sorted(p for p in self.parameters if p in wanted):
                per_slot = [(s, values[_gene_name(model, param, g, s, self)]) for s in self.slots()]
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

    # --- loading --------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, resolve: bool = True) -> ParameterSpace:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise SearchSpaceError(f"{path}: cannot read the search space ({e}).") from None
        if not isinstance(raw, dict):
            raise SearchSpaceError(f"{path}: a search space is a mapping.")
        if resolve and raw.get("granularity", {}).get("layers_per_group") and "num_layers" not in raw:
            raw["num_layers"] = _layers_of(raw.get("base_model"), path.parent)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = field_problems(e)
            raise SearchSpaceError(f"{path}: invalid search space: {problems}.") from None


@dataclass(frozen=True)
class Gene:
    """One coordinate of the unit cube: a range to scale to, or choices to pick from."""

    name: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()

    def value(self, u: float):
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        return self.low + u * (self.high - self.low)

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else f"[{self.low:g}, {self.high:g}]"


def _gene_name(model: str, param: str, group: int, slot: str, space: ParameterSpace) -> str:
    name = f"{Path(model).name}.{param}"
    if space.granularity.layers_per_group:
        name += f"[g{group}]"
    if space.granularity.filters:
        name += f"[{slot}]"
    return name


def _layers_of(base: str | None, where: Path) -> int:
    from evomerge.merge.engine import resolve_model_path

    if not base:
        raise SearchSpaceError("base_model is required.")
    config = resolve_model_path(base, [where, Path.cwd()]) / "config.json"
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (OSError, KeyError, ValueError) as e:
        raise SearchSpaceError(
            f"num_layers: could not read num_hidden_layers from {config} ({e}); set num_layers in the space."
        ) from None
