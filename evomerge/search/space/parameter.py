"""Parameter-space (PS) search spaces: which merge of whole models, with which values.

A space says which models are merged onto which base, which methods may be
chosen, which parameters are searched and in what ranges, and how finely: one
value per model for the whole network, per group of ``k`` layers, and/or per
module filter (``self_attn``, ``mlp``, the rest). ``genes()`` lists the
coordinates of the unit cube an optimiser searches; ``decode(x)`` turns a point
of it into a ``Recipe``. Every optimiser works on the same cube, so the space,
not the optimiser, knows what a merge is.

Any registered method can be searched, with the parameters it declares (per model
or shared) as genes within the bounds it declares; ``granularity.method_per_group``
gives every group of layers its own method gene.

Layer groups become slices of the recipe (exact per-group values, which
mergekit's interpolated gradients cannot express); filters become
``{filter, value}`` parameter lists.
"""

from __future__ import annotations

import difflib
import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from evomerge.merge.registry import BasePolicy, MethodSpec, Param, Scope, get_method
from evomerge.methods import METHODS
from evomerge.recipe import Recipe
from evomerge.search.space.base import (
    Gene,
    Range,
    Space,
    load_context,
    read_depth,
    register_space,
    short_name,
    unique_labels,
)

OTHER = "other"  # the filter slot for tensors no named filter matches


class Granularity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    layers_per_group: int | None = Field(default=None, ge=1, description="None: one group for all layers.")
    filters: list[str] = Field(default_factory=list, description="e.g. [self_attn, mlp]; the rest is 'other'.")
    method_per_group: bool = Field(
        default=False,
        description="Each group of layers chooses its own method (a gene per group); the embeddings "
        "follow the first group's method, the final norm and head the last group's.",
    )


class Choice(BaseModel):
    """A parameter searched over listed values (a flag such as ``normalize``, or a few numbers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[bool | int | float | str] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"choices {self.choices} repeat a value; list each once")
        return self


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def method_params(method: str) -> dict[str, Param]:
    """The parameters merge method ``method`` takes, by name (its registered ``MethodSpec``)."""
    return {p.name: p for p in get_method(method).params}


def _fits(spec: MethodSpec, n: int) -> bool:
    return n >= spec.min_inputs and (spec.max_inputs is None or n <= spec.max_inputs)


def _wanted(spec: MethodSpec) -> str:
    if spec.max_inputs == spec.min_inputs:
        return f"exactly {spec.min_inputs}"
    if spec.max_inputs is None:
        return f"at least {spec.min_inputs}"
    return f"{spec.min_inputs} to {spec.max_inputs}"


def _bounds_apply(spec: MethodSpec, param: Param, searched: set[str]) -> bool:
    """Whether ``param``'s bounds hold in recipes this space decodes: always, or (``bounded_by``)
    while a flag is on, which it is by default or may be when the flag is searched."""
    if param.bounded_by is None:
        return True
    flag = spec.param(param.bounded_by)
    return param.bounded_by in searched or (flag is not None and flag.default is True)


def _joint_problem(spec: MethodSpec, ranges: dict[str, Range | Choice]) -> str | None:
    """A method's check on several parameters (DELLA: density +- epsilon inside (0, 1)), tried at
    the corners of the searched box and just inside them (a check may exempt the bounds
    themselves, as DELLA exempts density 1, while points next to them fail)."""
    if spec.check is None:
        return None
    axes: dict[str, list] = {}
    for p in spec.params:
        r = ranges.get(p.name)
        if p.inert or r is None:
            axes[p.name] = [None if p.required else p.default]
        elif isinstance(r, Choice):
            axes[p.name] = [p.coerce(c) for c in r.choices]
        elif p.type is int:  # integer genes decode to whole numbers only
            axes[p.name] = [math.ceil(r.low), math.floor(r.high)]
        else:
            inside = (r.high - r.low) * 1e-6
            axes[p.name] = [r.low, r.low + inside, r.high - inside, r.high]
    for corner in itertools.product(*axes.values()):
        values = dict(zip(axes, corner, strict=True))
        if any(v is None for v in values.values()):
            continue
        if problem := spec.check(values):
            return problem
    return None


@register_space
class ParameterSpace(Space):
    """A parameter-space (PS) search space over merges of ``models`` onto ``base_model``.

    ``methods`` may name any registered merge method whose input count fits ``models``;
    ``parameters`` gives a range (or ``choices``) for any parameter those methods take, and
    each becomes genes: one per model for a per-model parameter (``weight``, ``density``), one
    for the merge for a shared one (``t``, ``select_topk``, ``lambda``), per group of layers and
    per filter. A recipe gets the parameters its method takes; the others' genes are idle there.
    """

    kind: Literal["parameter"] = "parameter"
    base_model: str
    models: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    parameters: dict[str, Range | Choice] = Field(default_factory=dict)
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
        if len(set(self.models)) != len(self.models) or self.base_model in self.models:
            raise ValueError("models must be distinct and must not include base_model")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} repeat a method; list each once")
        specs: dict[str, MethodSpec] = {}
        for i, name in enumerate(self.methods):
            if name not in METHODS.names():
                raise ValueError(
                    f"methods[{i}]: {name!r} is not a merge method{_did_you_mean(name, METHODS.names())}; "
                    f"choose from {', '.join(METHODS.names())}"
                )
            specs[name] = get_method(name)
        n = len(self.models)
        for name, spec in specs.items():
            if not _fits(spec, n):
                raise ValueError(
                    f"methods: {name!r} merges {_wanted(spec)} model(s)"
                    f"{' onto the base' if spec.base is not BasePolicy.INPUT else ''} and this space has "
                    f"{n} ({', '.join(short_name(m) for m in self.models)}); remove {name!r} from methods "
                    f"or list {_wanted(spec)} models"
                )
        searched = set(self.parameters)
        taken = {p.name for spec in specs.values() for p in spec.params if not p.inert}
        for name in sorted(searched - taken):
            raise ValueError(
                f"parameters.{name}: none of the methods {self.methods} takes a parameter {name!r}"
                f"{_did_you_mean(name, taken)}; they take {', '.join(sorted(taken)) or 'none'}"
            )
        for name, spec in specs.items():
            for p in spec.params:
                if p.inert:
                    continue
                if p.required and p.name not in searched:
                    raise ValueError(
                        f"parameters: method {name!r} needs {p.name!r}; add a range for it, e.g. "
                        f"`{p.name}: {{low: {p.low if p.low is not None else 0:g}, high: "
                        f"{p.high if p.high is not None else 1:g}}}`, or remove {name!r} from methods"
                    )
                r = self.parameters.get(p.name)
                if r is None:
                    continue
                if isinstance(r, Range):
                    if p.type not in (float, int):
                        raise ValueError(
                            f"parameters.{p.name}: {name!r} takes {p.name} as a "
                            f"{'flag' if p.type is bool else p.type.__name__}, not a number range; "
                            f"give it as `{{choices: [true, false]}}`"
                        )
                    if _bounds_apply(spec, p, searched) and (p.out_of_range(r.low) or p.out_of_range(r.high)):
                        raise ValueError(
                            f"parameters.{p.name}: the range [{r.low:g}, {r.high:g}] goes outside "
                            f"{p.range_text()}, the values {name!r} accepts ({p.why or 'its bounds'}); "
                            f"narrow it to lie within {p.range_text()}"
                        )
                else:
                    for c in r.choices:
                        try:
                            value = p.coerce(c)
                        except ValueError as e:
                            raise ValueError(f"parameters.{p.name}.choices: {e} (method {name!r})") from None
                        if _bounds_apply(spec, p, searched) and p.out_of_range(value):
                            raise ValueError(
                                f"parameters.{p.name}.choices: {c!r} is outside {p.range_text()}, the "
                                f"values {name!r} accepts ({p.why or 'its bounds'}); remove it"
                            )
        for name, spec in specs.items():
            if problem := _joint_problem(spec, self.parameters):
                raise ValueError(
                    f"parameters: with the searched ranges, {name!r} refuses some points of the space "
                    f"({problem}); narrow the ranges so that every combination is valid"
                )
        if self.granularity.layers_per_group and self.num_layers is None:
            raise ValueError("layers_per_group needs num_layers (set it, or load with resolve=True)")
        return self

    # --- the genome -----------------------------------------------------------------

    def _specs(self) -> dict[str, MethodSpec]:
        return {m: get_method(m) for m in self.methods}

    def _scoped(self) -> tuple[list[str], list[str]]:
        """The searched parameters that are per model in some method, and those shared in some
        (a parameter can be both, in different methods: each gets its own genes)."""
        per_model, shared = set(), set()
        for spec in self._specs().values():
            for p in spec.params:
                if p.name in self.parameters and not p.inert:
                    (per_model if p.scope is Scope.PER_MODEL else shared).add(p.name)
        return sorted(per_model), sorted(shared)

    def groups(self) -> list[tuple[int, int]]:
        """Layer ranges ``[start, end)`` that get their own values (one if no grouping)."""
        k = self.granularity.layers_per_group
        if not k:
            return [(0, self.num_layers or 0)]
        n = self.num_layers or 0
        return [(s, min(s + k, n)) for s in range(0, n, k)]

    def slots(self) -> list[str]:
        return [*self.granularity.filters, OTHER] if self.granularity.filters else [OTHER]

    def _method_genes(self) -> list[str]:
        if len(self.methods) < 2:
            return []
        if self.granularity.method_per_group and len(self.groups()) > 1:
            return [f"method[g{g}]" for g in range(len(self.groups()))]
        return ["method"]

    def _gene(self, name: str, param: str) -> Gene:
        r = self.parameters[param]
        if isinstance(r, Choice):
            return Gene(name, choices=tuple(r.choices))
        integer = any(p.type is int for spec in self._specs().values() for p in spec.params if p.name == param)
        if integer:
            return Gene(name, math.ceil(r.low), math.floor(r.high), integer=True)
        return Gene(name, r.low, r.high)

    def genes(self) -> list[Gene]:
        # The order (method, then per group: per-model genes, then shared ones) keeps the genomes
        # of spaces written before shared parameters were searchable unchanged.
        out = [Gene(name, choices=tuple(self.methods)) for name in self._method_genes()]
        per_model, shared = self._scoped()
        for g, _ in enumerate(self.groups()):
            for model in self.models:
                for param in per_model:
                    for slot in self.slots():
                        out.append(self._gene(self._gene_name(model, param, g, slot), param))
            for param in shared:
                for slot in self.slots():
                    out.append(self._gene(self._gene_name(None, param, g, slot), param))
        return out

    def source_models(self) -> list[str]:
        return [self.base_model, *self.models]

    def decode(self, x) -> Recipe:
        """The recipe at point ``x`` of the unit cube (values outside [0, 1] are clipped)."""
        genes = self.genes()
        x = self.unit(x, len(genes))
        values = {g.name: g.value(v) for g, v in zip(genes, x, strict=True)}
        groups = self.groups()
        method_of = [
            values.get(f"method[g{g}]", values.get("method", self.methods[0])) for g in range(len(groups))
        ]
        specs = self._specs()

        def setting(name_of_slot) -> Any:
            per_slot = [(s, values[name_of_slot(s)]) for s in self.slots()]
            if len(per_slot) == 1:
                return _rounded(per_slot[0][1])
            return [
                {"filter": s, "value": _rounded(v)} if s != OTHER else {"value": _rounded(v)}
                for s, v in per_slot
            ]

        def params(method: str, model: str | None, g: int) -> dict:
            """The per-model (``model``) or shared (None) parameters ``method`` takes in group g."""
            scope = Scope.SHARED if model is None else Scope.PER_MODEL
            names = sorted(
                p.name for p in specs[method].params
                if p.scope is scope and p.name in self.parameters and not p.inert
            )
            return {p: setting(lambda s, p=p: self._gene_name(model, p, g, s)) for p in names}

        def uses_base(method: str) -> bool:
            # the task-vector methods add deltas to the base; INPUT methods (linear) merge the models
            return specs[method].base is not BasePolicy.INPUT

        common: dict[str, Any] = {"merge_method": method_of[0], "dtype": self.dtype, "seed": self.seed}
        if any(uses_base(m) for m in method_of):
            common["base_model"] = self.base_model
        if len(groups) == 1:
            method = method_of[0]
            data = {**common, "models": [{"model": m, "parameters": params(method, m, 0)} for m in self.models]}
            if shared := params(method, None, 0):
                data["parameters"] = shared
        else:
            slices = []
            for g, (s, e) in enumerate(groups):
                method = method_of[g]
                sources = [{"model": self.base_model, "layer_range": [s, e]}] if uses_base(method) else []
                sources += [
                    {"model": m, "layer_range": [s, e], "parameters": params(method, m, g)}
                    for m in self.models
                ]
                entry: dict[str, Any] = {"sources": sources}
                if method != common["merge_method"]:
                    entry["merge_method"] = method
                if shared := params(method, None, g):
                    entry["parameters"] = shared
                slices.append(entry)
            data = {**common, "slices": slices}
        return Recipe.from_dict(data, "search space")

    def _labels(self) -> dict[str, str]:
        """Each model's name in gene names: the last part of its reference, told apart by ``#i``
        where two share it (``alice/lora`` and ``bob/lora``, ``org/base+a/lora`` and ``org/base+b/lora``)."""
        return dict(zip(self.models, unique_labels([short_name(m) for m in self.models]), strict=True))

    def _gene_name(self, model: str | None, param: str, group: int, slot: str) -> str:
        name = param if model is None else f"{self._labels()[model]}.{param}"
        if self.granularity.layers_per_group:
            name += f"[g{group}]"
        if self.granularity.filters:
            name += f"[{slot}]"
        return name


def _rounded(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v
