"""Recipe: one merge, fully specified, typed and validated.

The schema is a superset of mergekit's merge configuration, so a mergekit YAML
loads unchanged: ``models`` (a parameter-space merge of whole models) or
``slices`` (a layer-space recipe: an ordered path of layer ranges, each slice a
passthrough copy or itself a merge of several models' ranges), ``base_model``,
``merge_method``, ``parameters`` (scalars, gradients interpolated across layers,
or lists of ``{filter, value}`` matched against tensor names), ``dtype``,
``out_dtype``, ``tokenizer_source`` (``base``, ``union`` or a model), the
``tokenizer`` block (vocabulary source, per-token embeddings, padding) and
``chat_template``.

evomerge adds three fields that mergekit cannot express; ``to_mergekit``
refuses recipes that use them in ways it cannot translate:

* ``seed`` - the seed of randomised methods (DARE, DELLA): same seed, same bytes;
* ``slices[].merge_method`` - a per-slice method, so one path can mix copied
  and merged slices (Sakana's data-flow path after a parameter-space merge);
* ``slices[].scale`` - multiplies what the slice's layers write into the
  residual stream (``o_proj`` and ``down_proj``), the data-flow scaling gene.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from evomerge.errors import RecipeError
from evomerge.methods import MERGEKIT_ONLY_METHODS, METHODS
from evomerge.validation import StrictModel, problems

Scalar = Union[bool, int, float, str]


class ConditionalParameter(StrictModel):
    """A parameter value that applies to tensors whose name contains ``filter``."""

    value: Union[Scalar, list[Scalar]]
    filter: str | None = None

    def applies_to(self, tensor: str) -> bool:
        """No filter (or ``*``) applies to every tensor, else those whose name contains it."""
        return self.filter in (None, "*") or self.filter in tensor


ParameterSetting = Union[ConditionalParameter, list[ConditionalParameter], Scalar, list[Scalar]]
Parameters = dict[str, ParameterSetting]


def gradient_position(index: int, count: int) -> float:
    """Where a gradient is read for layer ``index`` of a slice of ``count`` layers: 0 at the
    first, 1 at the last, 1 for a one-layer slice (and 0 for embeddings and the head)."""
    return index / (count - 1) if count > 1 else 1.0


def gradient_at(values: Sequence[Any], t: float) -> Any:
    """A gradient (a list of values spread evenly over a slice) read at ``t`` in [0, 1]: numbers
    are interpolated linearly between neighbouring entries; other values step (the entry at or
    below ``t``)."""
    pos = t * (len(values) - 1)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        i0 = int(pos)
        i1 = min(len(values) - 1, i0 + 1)
        frac = pos - i0
        return (1 - frac) * values[i0] + frac * values[i1]
    return values[int(pos)]

# Which dtype names a recipe may use, and their canonical spelling.
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
}

# mergekit fields evomerge refuses, with why and what to do instead.
_UNSUPPORTED_TOP = {
    "modules": "it names the parts of multi-module models (a vision tower beside a text decoder), "
    "which evomerge does not merge; for a single-module model it means the same as top-level "
    "`models:` or `slices:`, so write the merge with those",
}
_UNSUPPORTED_SLICE = {
    "residual_weight": "mergekit 0.1.5 parses it but never reads it (a config that sets it merges "
    "exactly as one without it), so evomerge refuses it rather than ignore it silently; to weight "
    "what a slice adds to the residual stream, use evomerge's slice `scale`",
}
# Tensors through which a layer writes into the residual stream: a slice's `scale` multiplies these.
RESIDUAL_WRITERS = ("o_proj", "down_proj", "out_proj", "c_proj", "fc2", "dense_4h_to_h")


def _canonical_dtype(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    try:
        return DTYPE_ALIASES[str(value).lower()]
    except KeyError:
        raise ValueError(
            f"{field} {value!r} is not a supported dtype; use one of float32, float16, bfloat16, float64."
        ) from None


class ModelSource(StrictModel):
    """A whole model in a parameter-space merge, with its per-model parameters."""

    model: str
    parameters: Parameters | None = None


class SliceSource(StrictModel):
    """A range of layers ``[start, end)`` of one model."""

    model: str
    layer_range: tuple[int, int]
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _check_range(self) -> SliceSource:
        start, end = self.layer_range
        if start < 0 or end <= start:
            raise ValueError(
                f"layer_range {list(self.layer_range)} of {self.model!r} must be [start, end) with 0 <= start < end."
            )
        return self

    @property
    def num_layers(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


class Slice(StrictModel):
    """One step of a layer-space path: copied from one source or merged from several."""

    sources: list[SliceSource] = Field(min_length=1)
    base_model: str | None = None
    parameters: Parameters | None = None
    merge_method: str | None = None
    scale: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, fix in _UNSUPPORTED_SLICE.items():
                if key in data:
                    raise ValueError(
                        f"the mergekit slice field {key!r} is not supported by evomerge: {fix}."
                    )
        return data

    @model_validator(mode="after")
    def _check_lengths(self) -> Slice:
        lengths = {s.num_layers for s in self.sources}
        if len(lengths) > 1:
            ranges = ", ".join(f"{s.model}{list(s.layer_range)}" for s in self.sources)
            raise ValueError(
                f"all sources of a slice must span the same number of layers; got {ranges}."
            )
        return self

    @property
    def num_layers(self) -> int:
        return self.sources[0].num_layers


class ModelTokenEmbedding(StrictModel):
    """A token's embedding taken from a model's row: by ``token_id`` or by ``token`` (in that
    model's own vocabulary)."""

    kind: Literal["model_token"]
    model: str
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ModelTokenEmbedding:
        if (self.token_id is None) == (self.token is None):
            raise ValueError(
                f"a model_token source (model {self.model!r}) needs exactly one of token_id or token."
            )
        return self


class ZeroEmbedding(StrictModel):
    """A token's embedding of zeros."""

    kind: Literal["zero"]


class TokenEmbedding(StrictModel):
    """Where a token's embedding row comes from (mergekit's ``TokenEmbeddingConfig``).

    ``source``: a model (its row for this token), a ``model_token`` or ``zero`` source, or none
    (the default for a token some model lacks). ``force``: use the source for every model, even
    those that have the token.
    """

    source: Union[ModelTokenEmbedding, ZeroEmbedding, str, None] = None
    force: bool = False


class TokenizerSettings(StrictModel):
    """mergekit's ``tokenizer:`` block: the output vocabulary and how its rows are made."""

    source: str = "union"  # "union", "base" or a model
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(default=None, ge=1)


class Recipe(StrictModel):
    """One merge. Load with ``Recipe.from_yaml``/``Recipe.load``; hash with ``content_hash``."""

    merge_method: str
    models: list[ModelSource] | None = None
    slices: list[Slice] | None = None
    base_model: str | None = None
    parameters: Parameters | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, fix in _UNSUPPORTED_TOP.items():
                if data.get(key) is not None:
                    raise ValueError(
                        f"the mergekit field {key!r} is not supported by evomerge: {fix}."
                    )
        return data

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if (self.models is None) == (self.slices is None) or not (self.models or self.slices):
            raise ValueError(
                "a recipe needs exactly one of `models:` (parameter space) or `slices:` (layer space)."
            )
        self.dtype = _canonical_dtype(self.dtype, "dtype")
        self.out_dtype = _canonical_dtype(self.out_dtype, "out_dtype")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError(
                "give either `tokenizer_source` or a `tokenizer:` block, not both (mergekit refuses "
                "both too); move the source into `tokenizer: {source: ...}`."
            )
        for method in self.methods_used():
            if method in MERGEKIT_ONLY_METHODS:
                raise ValueError(
                    f"merge method {method!r} is a mergekit method evomerge does not implement yet; "
                    f"use one of: {', '.join(METHODS.names())}"
                )
            if method not in METHODS:
                raise ValueError(METHODS.unknown_message(method))
        return self

    # -- structure -------------------------------------------------------------

    def methods_used(self) -> list[str]:
        names = [self.merge_method]
        for s in self.slices or []:
            if s.merge_method:
                names.append(s.merge_method)
        return list(dict.fromkeys(names))

    def referenced_models(self) -> list[str]:
        """Every model the recipe reads, in first-mention order."""
        refs: list[str] = []
        if self.base_model:
            refs.append(self.base_model)
        for m in self.models or []:
            refs.append(m.model)
        for s in self.slices or []:
            if s.base_model:
                refs.append(s.base_model)
            refs.extend(src.model for src in s.sources)
        return list(dict.fromkeys(refs))

    def with_models_renamed(self, names: dict[str, str], source: str = "the recipe") -> Recipe:
        """This recipe with model references replaced by ``names`` (``model`` and ``base_model``,
        top level and in slices, and a ``tokenizer_source``/``tokenizer.source`` naming a model)."""
        data = self.to_dict()
        entries = [data, *(data.get("models") or [])]
        for s in data.get("slices") or []:
            entries += [s, *s["sources"]]
        for entry in entries:
            for key in ("model", "base_model"):
                if entry.get(key) in names:
                    entry[key] = names[entry[key]]
        if data.get("tokenizer_source") in names:
            data["tokenizer_source"] = names[data["tokenizer_source"]]
        if (data.get("tokenizer") or {}).get("source") in names:
            data["tokenizer"]["source"] = names[data["tokenizer"]["source"]]
        return Recipe.from_dict(data, source)

    def summary(self) -> str:
        """One line for tables: the method, or the layer path (``model[start:end]``, merged slices
        by their method, ``x1.2`` for a scale)."""
        if not self.slices:
            return self.merge_method
        steps = []
        for s in self.slices:
            src = s.sources[0]
            start, end = src.layer_range
            name = (s.merge_method or self.merge_method) if len(s.sources) > 1 else Path(src.model).name
            step = f"{name}[{start}:{end}]" if end - start > 1 else f"{name}[{start}]"
            if s.scale is not None and s.scale != 1.0:
                step += f"x{s.scale:.2f}"
            steps.append(step)
        return " ".join(steps)

    @property
    def vocabulary_source(self) -> str | None:
        """``union``, ``base``, a model, or None when the recipe leaves the vocabulary alone."""
        if self.tokenizer is not None:
            return self.tokenizer.source
        return self.tokenizer_source

    @property
    def is_layer_space(self) -> bool:
        return self.slices is not None

    # -- serialisation -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def content_hash(self) -> str:
        """A stable hash of what the recipe does: key order and ``1`` vs ``1.0`` do not matter."""
        canonical = json.dumps(_canonical(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError(
                f"{source}: a recipe must be a mapping of fields, got {type(data).__name__}."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise RecipeError(f"{source} is not a valid recipe: {problems(err, _UNION_TAGS)}.") from err

    @classmethod
    def from_yaml(cls, text: str, source: str = "recipe") -> Recipe:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(f"{source} is not valid YAML: {err}") from err
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise RecipeError(
                f"Cannot read recipe {path}: {err.strerror}. Check the path."
            ) from err
        return cls.from_yaml(text, str(path))


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


# Union members pydantic names in error locations (not fields).
_UNION_TAGS = frozenset({"ConditionalParameter"})
