"""From a recipe and its sources' metadata to a list of per-tensor operations.

Planning reads no weights: only tensor names, shapes, dtypes and configs. It
resolves every parameter for every output tensor with mergekit's rules:

* a parameter is looked up in the source's own ``parameters`` (per model),
  then the slice's, then the recipe's; the first that yields a value wins;
* a list of numbers is a gradient, interpolated at ``t`` = position of the
  layer in its slice (0 for the first, 1 for the last; 1 for a one-layer
  slice, 0 for embeddings and the final norm / head);
* a list of ``{filter, value}`` picks the first entry whose filter is a
  substring of the tensor name (no filter or ``*`` matches all);
* a ``models:`` recipe is one slice over every layer of every model.

With an output vocabulary (``tokenizer_source`` / ``tokenizer:``, see
``evomerge.io.tokenizer``), the embeddings and output heads are re-indexed onto it
before they are merged (``evomerge.merge.vocab``); their row counts may then differ.

The result is checked before any compute: every input must exist with the same
shape, and a mismatch names the tensor, the models and their shapes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.errors import CheckpointError, RecipeError
from evomerge.io.checkpoint import TensorSource
from evomerge.io.compat import check_sources_fit, config_differences
from evomerge.io.model_config import layer_count
from evomerge.io.tokenizer import Vocabulary
from evomerge.io.writer import TensorSpec
from evomerge.merge._pieces import HALF_DTYPES, computing_in_float32
from evomerge.merge.registry import BasePolicy, MethodSpec, Param, TensorGroup, get_method
from evomerge.merge.vocab import align_vocabulary
from evomerge.recipe import (
    RESIDUAL_WRITERS,
    ConditionalParameter,
    Parameters,
    Recipe,
    Slice,
    SliceSource,
    gradient_at,
    gradient_position,
)

_LAYER = re.compile(r"^(?P<prefix>.*?\b(?:layers|h|blocks|layer))\.(?P<index>\d+)\.(?P<rest>.+)$")
_PRE_MARKERS = ("embed", "wte", "wpe")
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass
class TensorOp:
    """One output tensor: which inputs, which method, which resolved parameters."""

    name: str
    method: MethodSpec
    inputs: list[tuple[str, str]]  # (model, tensor) per entry of TensorGroup.tensors
    base: tuple[str, str] | None
    shared: dict[str, Any]
    per_model: dict[str, list[Any]]
    shape: tuple[int, ...] = ()
    in_dtype: torch.dtype = torch.float32
    scale: float | None = None
    layer: int | None = None  # output layer index; None outside the layer stack
    # A vocabulary tensor re-indexed onto the output vocabulary: its models in the recipe's
    # order and the slice's base (the defaults of missing tokens depend on both).
    vocab_models: list[str] | None = None
    vocab_base: str | None = None

    @property
    def all_inputs(self) -> list[tuple[str, str]]:
        return ([self.base] if self.base else []) + self.inputs


@dataclass
class MergePlan:
    ops: list[TensorOp]
    num_layers: int
    config_source: str  # model whose config.json the output config starts from
    compute_dtype: torch.dtype | None
    out_dtype: torch.dtype | None
    seed: int
    tied_output: bool
    layer_count_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    vocabulary: Vocabulary | None = None

    def output_dtype(self, op: TensorOp) -> torch.dtype:
        return self.out_dtype or self.compute_dtype or op.in_dtype

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(op.name, op.shape, self.output_dtype(op)) for op in self.ops]

    def output_config(self, sources: Mapping[str, TensorSource]) -> dict[str, Any]:
        config = dict(sources[self.config_source].config)
        if self.layer_count_key:
            outer, _, key = self.layer_count_key.rpartition(".")  # "text_config.num_hidden_layers"
            if outer:
                config[outer] = {**config[outer], key: self.num_layers}
            else:
                config[key] = self.num_layers
        dtypes = {self.output_dtype(op) for op in self.ops}
        if len(dtypes) == 1:
            name = str(next(iter(dtypes))).removeprefix("torch.")
            config["torch_dtype" if "torch_dtype" in config else "dtype"] = name
        config["tie_word_embeddings"] = self.tied_output
        if self.vocabulary is not None:
            if "vocab_size" not in config and "vocab_size" in (config.get("text_config") or {}):
                config["text_config"] = {**config["text_config"], "vocab_size": self.vocabulary.size}
            else:
                config["vocab_size"] = self.vocabulary.size
        return config

    def run_op(self, op: TensorOp, fetch, device: torch.device | str,
               into_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Merge one tensor; ``fetch(model, tensor)`` returns an input tensor. ``into_dtype``: the
        dtype of the tensor the result is stored into (a resident model's), which is the output
        dtype where the recipe names none: the result is rounded there once either way."""
        out_dtype = self.output_dtype(op) if self.out_dtype or into_dtype is None else into_dtype
        raw_base = fetch(*op.base) if op.base else None
        raw = [fetch(*r) for r in op.inputs]
        # Half sources of a float32 merge go to a method that reads them as float32 itself
        # unconverted: no float32 copy of each input (a 128k-token bf16 embedding's is 1 GB).
        as_float32 = (self.compute_dtype == torch.float32 and op.method.reads_half_as_float32
                      and out_dtype in HALF_DTYPES and op.scale in (None, 1.0)
                      and torch.device(device).type == "cpu"
                      and all(t.dtype == out_dtype for t in [*raw, *([raw_base] if op.base else [])]))

        def load(t: torch.Tensor) -> torch.Tensor:
            dtype = t.dtype if as_float32 else self.compute_dtype or t.dtype
            return t.to(device=device, dtype=dtype, non_blocking=True)

        base = load(raw_base) if op.base else None
        tensors = [load(t) for t in raw]
        if op.vocab_models is not None and self.vocabulary is not None:
            by_model = {m: t for (m, _), t in zip(op.inputs, tensors, strict=True)}
            if op.base:
                by_model[op.base[0]] = base
            aligned = align_vocabulary(
                self.vocabulary, op.vocab_models, by_model, op.vocab_base, op.name
            )
            tensors = [aligned[m] for m, _ in op.inputs]
            base = aligned[op.base[0]] if op.base else None
        group = TensorGroup(
            name=op.name,
            tensors=tensors,
            base=base,
            seed=self.seed if op.method.randomized else None,
            layer=op.layer,
            num_layers=self.num_layers,
        )
        try:
            with computing_in_float32() if as_float32 else contextlib.nullcontext():
                out = op.method.fn(group, **op.shared, **op.per_model)
        except ValueError as e:  # what a method refuses in these tensors' values, not a bug
            where = f"tensor {op.name}" if op.name in str(e) else f"tensor {op.name} ({', '.join(m for m, _ in op.all_inputs)})"
            raise RecipeError(
                f"{op.method.name} could not merge {where}: {e}. Change the method or its parameters "
                f"for this tensor (a `{{filter, value}}` parameter or a slice of its own)."
            ) from e
        if op.scale is not None and op.scale != 1.0:
            out = out * op.scale
        return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where a model keeps its layers: ``{prefix}.{index}.{rest}``."""

    prefix: str
    layers: dict[int, list[str]]  # index -> rests, in checkpoint order
    pre: list[str]
    post: list[str]


def _layout(source: TensorSource) -> _Layout:
    prefix, layers, pre, post = None, {}, [], []
    for name in source.tensor_names():
        m = _LAYER.match(name)
        if m:
            prefix = prefix or m["prefix"]
            layers.setdefault(int(m["index"]), []).append(m["rest"])
        elif any(marker in name for marker in _PRE_MARKERS):
            pre.append(name)
        else:
            post.append(name)
    return _Layout(prefix or "model.layers", layers, pre, post)


def _layer_count(source: TensorSource, layout: _Layout) -> tuple[int, str | None]:
    """The source's depth and the config key that gives it (its config's, else its checkpoint's)."""
    found = layer_count(source.config)
    if found is not None:
        return found[1], found[0]
    return (max(layout.layers) + 1 if layout.layers else 0), None


def evaluate_setting(setting: Any, tensor: str, t: float, param: Param) -> Any:
    """Resolve one setting for one tensor; ``None`` when no filter matched."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, ConditionalParameter) for e in setting):
            for cond in setting:
                if cond.applies_to(tensor):
                    return evaluate_setting(cond.value, tensor, t, param)
            return None
        return param.coerce(gradient_at([param.coerce(v) for v in setting], t))
    return param.coerce(setting)


def _resolve(
    param: Param, scopes: list[Parameters | None], tensor: str, t: float, where: str
) -> Any:
    for scope in scopes:
        if scope and param.name in scope:
            try:
                value = evaluate_setting(scope[param.name], tensor, t, param)
            except ValueError as err:
                raise RecipeError(f"{where}: {err}.") from None
            if value is not None:
                return value
    if param.required:
        raise RecipeError(
            f"Parameter {param.name!r} is required for {where} but no value applies to it. Give it in the "
            f"model's `parameters:` (or globally), and check that a `filter:` entry matches this tensor."
        )
    return param.default


@dataclass
class _SliceCtx:
    slice: Slice
    index: int
    method: MethodSpec
    base: str | None  # base model used as the method's base, if any
    inputs: list[SliceSource]  # sources that become TensorGroup.tensors


def _slice_ctx(recipe: Recipe, s: Slice, index: int) -> _SliceCtx:
    method = get_method(s.merge_method or recipe.merge_method)
    base = s.base_model or recipe.base_model
    where = f"slices[{index}]" if recipe.slices is not None else "the recipe"
    models = [src.model for src in s.sources]
    if method.base is BasePolicy.INPUT:
        base, inputs = None, list(s.sources)
    elif method.base is BasePolicy.REQUIRED:
        if base is None:
            raise RecipeError(
                f"{where}: method {method.name!r} needs a base_model; set `base_model:`."
            )
        if base not in models:
            raise RecipeError(
                f"{where}: method {method.name!r} needs the base model {base!r} among the slice's sources; "
                f"add it with the same layer_range as the others."
            )
        inputs = [src for src in s.sources if src.model != base]
    else:  # OPTIONAL: a base only when it is among the sources
        if base not in models:
            base = None
        inputs = [src for src in s.sources if src.model != base]
    n = len(inputs)
    if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
        wanted = (
            f"exactly {method.min_inputs}"
            if method.min_inputs == method.max_inputs
            else f"at least {method.min_inputs}"
            if method.max_inputs is None
            else f"{method.min_inputs} to {method.max_inputs}"
        )
        kind = "non-base models" if method.base is not BasePolicy.INPUT else "models"
        raise RecipeError(
            f"{where}: method {method.name!r} takes {wanted} {kind}; got {n} ({', '.join(m.model for m in inputs) or 'none'})."
        )
    return _SliceCtx(s, index, method, base, inputs)


def _check_known_parameters(recipe: Recipe, ctxs: list[_SliceCtx]) -> list[str]:
    warnings = []
    known = {p.name for c in ctxs for p in c.method.params}
    scopes: list[tuple[str, Parameters | None]] = [("parameters", recipe.parameters)]
    for c in ctxs:
        scopes.append((f"slices[{c.index}].parameters", c.slice.parameters))
        scopes += [(f"{src.model}.parameters", src.parameters) for src in c.slice.sources]
    for where, scope in scopes:
        for name in scope or {}:
            if name not in known:
                warnings.append(
                    f"{where}: parameter {name!r} is not used by {', '.join(sorted({c.method.name for c in ctxs}))}; ignored."
                )
    return warnings


def build_plan(
    recipe: Recipe,
    sources: Mapping[str, TensorSource],
    *,
    seed: int | None = None,
    vocabulary: Vocabulary | None = None,
) -> MergePlan:
    """Plan ``recipe`` over ``sources`` (keyed by the recipe's model references);
    ``vocabulary``: the output vocabulary the recipe asks for (``build_vocabulary``)."""
    missing = [m for m in recipe.referenced_models() if m not in sources]
    if missing:
        raise RecipeError(
            f"The recipe references models that were not provided: {', '.join(missing)}."
        )
    if vocabulary is None and (recipe.vocabulary_source == "union" or recipe.tokenizer is not None):
        raise RecipeError(
            f"The recipe's vocabulary source {recipe.vocabulary_source!r} needs the models' "
            "tokenizers, which in-memory sources do not have; merge from model directories "
            "(evomerge merge, or InMemoryMerger given the directories' paths)."
        )
    check_parameter_ranges(recipe)
    _check_sources_fit(recipe, sources, vocabulary is None)
    layouts = {name: _layout(src) for name, src in sources.items()}
    counts = {name: _layer_count(sources[name], layouts[name]) for name in sources}

    if recipe.models is not None:
        srcs = [
            SliceSource(model=m.model, layer_range=(0, counts[m.model][0]), parameters=m.parameters)
            for m in recipe.models
        ]
        base_missing = recipe.base_model and recipe.base_model not in {
            m.model for m in recipe.models
        }
        if base_missing and get_method(recipe.merge_method).base is not BasePolicy.INPUT:
            srcs.append(
                SliceSource(model=recipe.base_model, layer_range=(0, counts[recipe.base_model][0]))
            )
        slices = [
            Slice.model_construct(
                sources=srcs, base_model=None, parameters=None, merge_method=None, scale=None
            )
        ]
    else:
        slices = list(recipe.slices or [])
    ctxs = [_slice_ctx(recipe, s, i) for i, s in enumerate(slices)]
    for c in ctxs:
        for src in c.slice.sources:
            n = counts[src.model][0]
            if src.layer_range[1] > n:
                raise RecipeError(
                    f"slices[{c.index}]: layer_range {list(src.layer_range)} of {src.model!r} goes past its {n} layers."
                )
    warnings = _check_known_parameters(recipe, ctxs)

    ops: list[TensorOp] = []
    problems: list[str] = []
    first, last = ctxs[0], ctxs[-1]
    out_model = first.slice.sources[0].model
    out_prefix = layouts[out_model].prefix

    def add(
        ctx: _SliceCtx,
        out_name: str,
        names: dict[str, str],
        t: float,
        scale: float | None,
        layer: int | None = None,
    ) -> None:
        scopes_shared = [ctx.slice.parameters, recipe.parameters]
        shared = {
            p.name: _resolve(p, scopes_shared, out_name, t, out_name)
            for p in ctx.method.shared_params
        }
        per_model: dict[str, list[Any]] = {p.name: [] for p in ctx.method.per_model_params}
        for src in ctx.inputs:
            scopes = [src.parameters, ctx.slice.parameters, recipe.parameters]
            for p in ctx.method.per_model_params:
                per_model[p.name].append(
                    _resolve(p, scopes, names[src.model], t, f"{src.model}: {names[src.model]}")
                )
        if ctx.method.check is not None:
            for i, src in enumerate(ctx.inputs):
                values = {**shared, **{k: v[i] for k, v in per_model.items()}}
                problem = ctx.method.check(values)
                if problem:
                    raise RecipeError(
                        f"{ctx.method.name} parameters of {src.model} at tensor {names[src.model]}: "
                        f"{problem} (in the recipe's `parameters:` for that model)."
                    )
        op = TensorOp(
            name=out_name,
            method=ctx.method,
            inputs=[(src.model, names[src.model]) for src in ctx.inputs],
            base=(ctx.base, names[ctx.base]) if ctx.base else None,
            shared=shared,
            per_model=per_model,
            scale=scale,
            layer=layer,
        )
        shapes = {}
        for model, tensor in op.all_inputs:
            if tensor not in sources[model]:
                problems.append(f"tensor {tensor} is missing from {model}")
                return
            shapes[model] = sources[model].shape(tensor)
        ref_model, ref_tensor = op.all_inputs[0]
        if vocabulary is not None and _is_vocabulary_tensor(out_name):
            models = [src.model for src in ctx.slice.sources if src.model in shapes]
            if not all(vocabulary.is_identity(m, shapes[m][0]) for m in models):
                short = [
                    f"{m} has {shapes[m][0]} rows but its tokenizer needs {need}"
                    for m in models
                    if (need := max(vocabulary.rows[m]) + 1) > shapes[m][0]
                ]
                if short:
                    problems.append(f"{out_name}: " + ", ".join(short))
                    return
                op.vocab_models = models
                op.vocab_base = ctx.slice.base_model or recipe.base_model
                shapes = {m: (vocabulary.size, *s[1:]) for m, s in shapes.items()}
        if len(set(shapes.values())) > 1:
            problems.append(
                f"{out_name}: " + ", ".join(f"{m} has {list(s)}" for m, s in shapes.items())
            )
            return
        op.shape = shapes[ref_model]
        op.in_dtype = sources[ref_model].dtype(ref_tensor)
        ops.append(op)

    # Embeddings and other tensors before the first layer come from the first slice's sources.
    for name in layouts[out_model].pre:
        add(first, name, {s.model: name for s in first.slice.sources}, 0.0, None)

    out_index = 0
    for ctx in ctxs:
        n = ctx.slice.num_layers
        for j in range(n):
            t = gradient_position(j, n)
            lead = ctx.slice.sources[0]
            rests = layouts[lead.model].layers.get(lead.layer_range[0] + j, [])
            for rest in rests:
                names = {
                    src.model: f"{layouts[src.model].prefix}.{src.layer_range[0] + j}.{rest}"
                    for src in ctx.slice.sources
                }
                scale = ctx.slice.scale if any(w in rest for w in RESIDUAL_WRITERS) else None
                add(ctx, f"{out_prefix}.{out_index}.{rest}", names, t, scale, out_index)
            out_index += 1

    # The final norm and the head come from the last slice's sources. A tied model has no
    # lm_head tensor: it reads its embedding instead, and the output keeps the head only if
    # some source has one of its own.
    tied_output = True
    for name in layouts[out_model].post:
        names = {}
        own_head = False
        for s in last.slice.sources:
            if name in sources[s.model]:
                names[s.model] = name
                own_head = own_head or _is_head(name)
            elif _is_head(name) and (emb := _embedding_name(layouts[s.model])):
                names[s.model] = emb
        if _is_head(name):
            if not own_head:
                continue
            tied_output = False
        add(last, name, names, 0.0, None)
    if not any(_is_head(n) for src in sources.values() for n in src.tensor_names()):
        tied_output = bool(sources[out_model].config.get("tie_word_embeddings", True))

    if problems:
        shown = "; ".join(problems[:6]) + (
            f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        )
        raise CheckpointError(
            f"The source models do not fit together for this recipe ({len(problems)} tensors differ): {shown}. "
            f"{_config_differences(recipe, sources)}Merge models that share an architecture and vocabulary, "
            "or choose layer ranges whose shapes agree."
        )
    compute = TORCH_DTYPES[recipe.dtype] if recipe.dtype else None
    out = TORCH_DTYPES[recipe.out_dtype] if recipe.out_dtype else None
    _, key = counts[out_model]
    if seed is None:
        seed = recipe.seed if recipe.seed is not None else 0
    return MergePlan(
        ops=ops,
        num_layers=out_index,
        config_source=recipe.base_model
        if recipe.base_model in sources and recipe.models is not None
        else out_model,
        compute_dtype=compute,
        out_dtype=out,
        seed=seed,
        tied_output=tied_output,
        layer_count_key=key or "num_hidden_layers",
        warnings=warnings + (vocabulary.warnings if vocabulary else []),
        vocabulary=vocabulary,
    )


def _is_vocabulary_tensor(name: str) -> bool:
    """A tensor with one row per token: the token embedding or the output head."""
    return "embed_tokens" in name or name.endswith("wte.weight") or _is_head(name)


def _is_head(name: str) -> bool:
    return name.startswith("lm_head") or name.endswith("lm_head.weight")


def _embedding_name(layout: _Layout) -> str | None:
    return next((n for n in layout.pre if "embed_tokens" in n or n.endswith("wte.weight")), None)


def _check_sources_fit(
    recipe: Recipe, sources: Mapping[str, TensorSource], same_vocabulary: bool = True
) -> None:
    """Architecture, vocabulary (unless re-indexed onto an output vocabulary), shapes and (for
    a ``models:`` merge) depth, from the configs (and tokenizers, for sources on disk): a
    clearer refusal than the tensors' shapes give."""
    models = recipe.referenced_models()
    configs = {m: sources[m].config for m in models}
    paths = {m: p for m in models if (p := getattr(sources[m], "path", None)) is not None}
    check_sources_fit(configs, paths, same_depth=recipe.models is not None, shapes=False,
                      where="This `models:` recipe", vocabulary=same_vocabulary)


def _parameter_scopes(recipe: Recipe):
    """``(field path, parameters, methods they feed)`` for every ``parameters:`` of a recipe."""
    top = [get_method(m) for m in recipe.methods_used()]
    yield "parameters", recipe.parameters, top
    for i, m in enumerate(recipe.models or []):
        yield f"models[{i}].parameters", m.parameters, top[:1]
    for j, s in enumerate(recipe.slices or []):
        method = [get_method(s.merge_method or recipe.merge_method)]
        yield f"slices[{j}].parameters", s.parameters, method
        for k, src in enumerate(s.sources):
            yield f"slices[{j}].sources[{k}].parameters", src.parameters, method


def _numbers(setting: Any, path: str):
    """Every number a setting holds, with its field path (gradient entries, filtered values)."""
    if isinstance(setting, ConditionalParameter):
        yield from _numbers(setting.value, f"{path}.value")
    elif isinstance(setting, list):
        for i, entry in enumerate(setting):
            yield from _numbers(entry, f"{path}[{i}]")
    else:
        yield path, setting


def _explicit_flag(recipe: Recipe, name: str, scopes: list[Parameters | None]) -> bool | None:
    """A boolean parameter set as a plain value in the nearest of ``scopes`` that sets it."""
    for scope in scopes:
        if scope and name in scope:
            value = scope[name]
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return None  # filtered or a gradient: the default decides
    return None


def check_parameter_ranges(recipe: Recipe) -> None:
    """Refuse a recipe whose parameters are out of their method's range (``density: 1.3``,
    a negative weight where the method divides by the weights' sum), naming the field path:
    ``models[1].parameters.density: 1.3 is outside [0, 1] ...``. Reads no model."""
    slice_scope = {j: s.parameters for j, s in enumerate(recipe.slices or [])}
    for path, scope, methods in _parameter_scopes(recipe):
        for name, setting in (scope or {}).items():
            for method in methods:
                param = method.param(name)
                if param is None or (param.low is None and param.high is None):
                    continue
                if param.bounded_by:
                    slice_index = int(path[7:path.index("]")]) if path.startswith("slices[") else None
                    chain = [scope, slice_scope.get(slice_index), recipe.parameters]
                    flag = _explicit_flag(recipe, param.bounded_by, chain)
                    if not (method.param(param.bounded_by).default if flag is None else flag):
                        continue
                for where, value in _numbers(setting, f"{path}.{name}"):
                    if param.out_of_range(value):
                        raise RecipeError(_range_message(where, value, param, method))


def _range_message(where: str, value: Any, param: Param, method: MethodSpec) -> str:
    why = f" ({param.why})" if param.why else ""
    if param.bounded_by:
        return (
            f"{where}: {value} is below {param.low:g}, which {method.name} does not allow while "
            f"{param.bounded_by} is on{why}. Use weights >= {param.low:g}, or set "
            f"`{param.bounded_by}: false` in the recipe's parameters."
        )
    return (
        f"{where}: {value} is outside {param.range_text()}, the range of {method.name}'s "
        f"{param.name!r}{why}. Set a value in {param.range_text()}."
    )


def _config_differences(recipe: Recipe, sources: Mapping[str, TensorSource]) -> str:
    diffs = config_differences({m: sources[m].config for m in recipe.referenced_models()})
    return ("Config: " + "; ".join(diffs) + ". ") if diffs else ""
