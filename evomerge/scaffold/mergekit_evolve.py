"""``evomerge convert mergekit-evolve``: a mergekit-evolve config as an evomerge search.

mergekit-evolve (mergekit 0.1.5: ``evo/config.py``, ``evo/genome.py``, ``scripts/evolve.py``)
searches a parameter space (``genome:``) with CMA-ES, scoring merges by a weighted sum of lm-eval
tasks (``tasks:``). Its config is read here with models of our own (unknown keys refused by name),
checked whole, and written as ``space.yaml`` (``kind: parameter``) and ``run.yaml`` (inline lm-eval
objectives, CMA-ES from mergekit-evolve's start and step), each field commented with its origin,
both validated as evomerge reads them before either is written. What evomerge cannot express
exactly is refused by name with the fix, never approximated silently; where the genome is
reparametrised (slerp's two weights become one ``t``; weights get bounds) the comments say so.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from evomerge.errors import EvomergeError
from evomerge.scaffold.yaml_writer import Commented as C
from evomerge.scaffold.yaml_writer import plain, render, write_files
from evomerge.validation import StrictModel, read_yaml_file

SPACE_FILE, RUN_FILE = "space.yaml", "run.yaml"
# mergekit-evolve's methods and the genes each gives every model (mergekit/evo/genome.py).
GENES = {"linear": ("weight",), "task_arithmetic": ("weight",), "ties": ("weight", "density"),
         "dare_ties": ("weight", "density"), "slerp": ("t",)}
CONVERTIBLE = ("task_arithmetic", "ties", "dare_ties", "slerp")
EVOLVE_NORMALIZE = {"ties": True, "dare_ties": True, "task_arithmetic": False}  # genome.py's, when unset
MAX_WEIGHT = 1.0  # the weight genes' bound (mergekit-evolve's weights are unbounded)


class MergekitEvolveError(EvomergeError):
    """A mergekit-evolve config or option that cannot be converted as written."""


def _normalizes(method: str) -> bool:
    """evomerge's default for the method (a parameter space searches a flag or leaves it so)."""
    from evomerge.merge.registry import get_method

    return bool(get_method(method).param("normalize").default)


class Genome(StrictModel):
    models: list[str] = Field(min_length=1)
    merge_method: str
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(default=0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: list[str] | None = None
    smooth: bool = False


class Task(StrictModel):
    name: str = Field(min_length=1)
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:  # a task given by name alone
        return {"name": data} if isinstance(data, str) else data


class EvolveConfig(StrictModel):
    genome: Genome
    tasks: list[Task] = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True


@dataclass(frozen=True)
class Options:
    """mergekit-evolve's options the conversion takes (its defaults), ``num_layers`` and ``device``."""

    task_search_path: tuple[str, ...] = ()
    max_fevals: int = 100
    sigma0: float = 1 / 6
    batch_size: int | None = None
    num_layers: int | None = None
    device: str = "cpu"


def convert_file(config_path: Path, out: Path, opts: Options, *, force: bool = False) -> list[Path]:
    """Convert ``config_path`` into ``out/space.yaml`` and ``out/run.yaml`` (both or neither)."""
    files = convert(load(config_path), Path(config_path), Path(out), opts)
    return write_files(out, files, force=force)


def load(path: Path) -> EvolveConfig:
    """The mergekit-evolve config in ``path``, or an error naming the file and each bad key."""
    raw = read_yaml_file(path, what="mergekit-evolve config", error=MergekitEvolveError,
                         examples="docs/mergekit_evolve.md shows one")
    if not isinstance(raw, dict):
        raise MergekitEvolveError(f"{path}: a mergekit-evolve config is a mapping with `genome:` and "
                                  f"`tasks:`, not {type(raw).__name__}; docs/mergekit_evolve.md shows one.")
    try:
        return EvolveConfig.model_validate(raw)
    except ValidationError as e:
        raise MergekitEvolveError(f"{path}: not a mergekit-evolve config evomerge can read: {_problems(e)}.") from None


def _problems(err: ValidationError) -> str:
    out: list[str] = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function")))]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        if e["type"] == "extra_forbidden":
            owner = {"genome": Genome, "tasks": Task}.get(str(loc[0]) if len(loc) > 1 else "", EvolveConfig)
            close = difflib.get_close_matches(str(loc[-1]), allowed := list(owner.model_fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            part = {Genome: "under genome:", Task: "in a task"}.get(owner, "at the top level")
            out.append(f"unknown key {where!r}{hint}; the keys mergekit-evolve allows {part} are "
                       f"{', '.join(allowed)}: remove it or fix its spelling")
            continue
        msg = e["msg"].removeprefix("Value error, ").rstrip(".")
        if len(loc) > 1 and loc[0] == "genome" and loc[1] in ("models", "base_model"):
            msg += " (write a model as mergekit-evolve's string form: path or Hub id[@revision][+adapter])"
        out.append(f"{where}: {msg}" if where else msg)
    return "; ".join(dict.fromkeys(out))


def convert(cfg: EvolveConfig, source: Path, out: Path, opts: Options) -> dict[str, str]:
    """The two files' texts, checked as evomerge reads them; nothing is written here."""
    from evomerge.config.run import RunConfig
    from evomerge.search.space import ParameterSpace

    def fail(field: str, text: str) -> MergekitEvolveError:
        return MergekitEvolveError(f"{source}: {field}: {text}")

    g = cfg.genome
    base, models, moved = _models(g, fail)
    depth = _depth(g, opts, fail)
    groups = depth // g.layer_granularity if depth else 1
    _check_genome(g, groups, fail)
    low = -MAX_WEIGHT if g.allow_negative_weights and g.merge_method != "slerp" else 0.0
    space = _space_doc(g, base, models, moved, depth, groups, low, lambda m: _ref(m, out))
    parsed = ParameterSpace.from_raw(plain(space), out / SPACE_FILE, resolve=False)
    run = _run_doc(cfg, opts, [gene.name for gene in parsed.genes()], low, out, fail)
    RunConfig.model_validate(plain(run))  # a failure here is a bug of the conversion, not the user's
    said = f"converted from the mergekit-evolve config {source} by `evomerge convert mergekit-evolve`."
    return {
        SPACE_FILE: render(space, f"evomerge search space {said} `evomerge space show "
                                  f"{out / SPACE_FILE}` lists its genes."),
        RUN_FILE: render(run, f"evomerge run config {said} Check it with `evomerge search --dry-run "
                              f"{out / RUN_FILE}`; run it with `evomerge search {out / RUN_FILE} --out RUN_DIR`."),
    }


def _models(g: Genome, fail) -> tuple[str, list[str], str]:
    """evomerge's base and experts, and what moved: "base" (dropped from models), "slerp"."""
    method = g.merge_method
    if method not in GENES:
        raise fail("genome.merge_method", f"{method!r} is not a method mergekit-evolve searches "
                   f"({', '.join(GENES)}); of those evomerge converts {', '.join(CONVERTIBLE)}.")
    if method == "linear":
        raise fail("genome.merge_method", "linear cannot be converted: evomerge's parameter space "
                   "merges `models` onto a `base_model` that is not one of them and its linear merge "
                   "leaves that base out, so it cannot weight every model as mergekit-evolve does "
                   "(mergekit-evolve, for its part, fails every linear merge whose base_model is not one "
                   f"of the models). Convertible methods: {', '.join(CONVERTIBLE)}; for fine-tunes of one "
                   "base, task_arithmetic or ties with that base as base_model searches their mixtures.")
    for i in (i for i, m in enumerate(g.models) if g.models.index(m) != i):
        raise fail(f"genome.models[{i}]", f"{g.models[i]!r} is listed twice; list each model once.")
    if method == "slerp":
        if (other := g.base_model not in (None, *g.models)) or len(g.models) != 2:
            raise fail("genome.models", "slerp converts with exactly two models (base_model unset or one "
                       "of them): mergekit-evolve interpolates the two highest-weighted models of each "
                       "layer group, which only for two models is one interpolation between fixed ends, and "
                       f"fails every merge with a third, outside base_model; this genome has {len(g.models)} "
                       f"model(s){' and a base_model outside them' if other else ''}. List two models, or use ties or dare_ties over more.")
        first = g.base_model or g.models[0]
        return first, [m for m in g.models if m != first], "slerp"
    if g.base_model is None:
        raise fail("genome.base_model", f"{method} merges task vectors against a base model and none "
                   "is named (mergekit-evolve refuses this genome too); add base_model.")
    experts = [m for m in g.models if m != g.base_model]
    if not experts:
        raise fail("genome.models", "only the base model is listed; add the models to merge onto it.")
    return g.base_model, experts, "base" if len(experts) < len(g.models) else ""


def _depth(g: Genome, opts: Options, fail) -> int | None:
    """The models' layer count, where layer groups need it (mergekit-evolve reads the first model's)."""
    if not g.layer_granularity:
        return None
    n = opts.num_layers
    if n is None:
        from evomerge.io.model_config import layer_count

        config = Path(g.models[0] if Path(g.models[0]).is_dir() else g.models[0].split("+")[0]) / "config.json"
        try:
            n = layer_count(json.loads(config.read_text(encoding="utf-8")))[1]  # type: ignore[index]
        except (OSError, ValueError, TypeError):
            raise fail("genome.layer_granularity", f"{g.layer_granularity} needs the models' layer count "
                       f"and {config} cannot be read (the first model is no local model directory); "
                       "pass --num-layers N.") from None
    if n < 1 or n % g.layer_granularity:
        raise fail("genome.layer_granularity", f"{g.layer_granularity} does not divide the models' {n} "
                   f"layers (mergekit-evolve requires it to); choose a divisor of {n}.")
    return n


def _check_genome(g: Genome, groups: int, fail) -> None:
    method = g.merge_method
    if g.tokenizer_source is not None:
        raise fail("genome.tokenizer_source", f"{g.tokenizer_source!r} cannot be converted: evomerge's "
                   "parameter spaces merge in the models' shared vocabulary and take no tokenizer_source. "
                   "Remove it if the models share the base's vocabulary (it then changes nothing); models "
                   "with different vocabularies cannot be searched this way.")
    if method == "slerp" and (g.smooth or g.filters):
        raise fail("genome.smooth" if g.smooth else "genome.filters", "slerp takes neither smooth nor "
                   "filters (mergekit-evolve refuses them too); remove it.")
    if g.smooth and groups > 1:
        raise fail("genome.smooth", f"true interpolates each gene's {groups} layer-group values across the "
                   "layers (a mergekit gradient), and evomerge's parameter spaces give each group constant "
                   "values; set smooth: false to search constant values per group of layer_granularity "
                   "layers, the closest space evomerge has.")
    for i, f in ((i, f) for i, f in enumerate(g.filters or []) if not f or g.filters.index(f) != i):
        raise fail(f"genome.filters[{i}]", f"{f!r} is empty or repeats an earlier filter; list each filter once.")
    if method in EVOLVE_NORMALIZE:
        wanted = EVOLVE_NORMALIZE[method] if g.normalize is None else g.normalize
        ours = _normalizes(method)
        if wanted != ours:
            said = (f"unset, which mergekit-evolve merges {method} with as {str(wanted).lower()}"
                    if g.normalize is None else f"{str(wanted).lower()} with {method}")
            raise fail("genome.normalize", f"{said}, cannot be converted: evomerge's {method} "
                       f"{'normalizes' if ours else 'does not normalize'} by default, and a parameter "
                       "space cannot pin a flag to another value (it can only search it). Set normalize: "
                       f"{str(ours).lower()} in the genome to search {method} as evomerge merges it.")
        if g.allow_negative_weights and wanted:
            raise fail("genome.allow_negative_weights", f"true with normalize on ({method}) cannot be "
                       "converted: evomerge refuses negative weights where a method divides by their sum "
                       "(a sum near 0 blows the merge up). Set allow_negative_weights: false.")


def _ref(ref: str, out: Path) -> str:
    """``ref`` for a file in ``out``: relative local paths (read from the working directory, as
    mergekit-evolve reads them) made relative to ``out``; absolute paths and Hub ids as written."""
    parts = [ref] if Path(ref).exists() or "+" not in ref else ref.split("+", 1)
    return "+".join(os.path.relpath(os.path.abspath(p), os.path.abspath(out))
                    if not os.path.isabs(p) and Path(p).exists() else p for p in parts)


def _space_doc(g: Genome, base: str, models: list[str], moved: str, depth: int | None, groups: int,
               low: float, ref) -> dict[str, Any]:
    method = g.merge_method
    if moved == "slerp":
        params: dict[str, Any] = {"t": C({"low": 0.0, "high": 1.0}, (
            "genome.merge_method: slerp. mergekit-evolve gives each of the two models a weight gene "
            "per layer group and interpolates from the higher-weighted one by softmax of the two, which "
            "is slerp from base_model to the other model at t = sigmoid(its gene - base_model's gene), "
            "any t in (0, 1): one gene t per group here instead of two, the same merges "
            "(allow_negative_weights and normalize change nothing for slerp there either)."))}
    else:
        why = ("with normalize on, only the weights' ratios matter, so this reaches every merge "
               "mergekit-evolve can" if _normalizes(method) else "mergekit-evolve's weights "
               "are unbounded; larger ones are not searched here (widen it by editing low/high, and "
               "scale sigma0 and x0 in run.yaml with it)")
        params = {"weight": C({"low": low, "high": MAX_WEIGHT}, (
            f"genome.allow_negative_weights: {str(g.allow_negative_weights).lower()}: weights are "
            f"{'signed genes' if low < 0 else '|gene|, so >= 0'}, bounded to [{low:g}, {MAX_WEIGHT:g}]: {why}."))}
        if "density" in GENES[method]:
            params["density"] = C({"low": 0.0, "high": 1.0}, "mergekit-evolve clamps |density gene| to [0, 1]")
    where = "relative paths rewritten relative to this file's folder (mergekit-evolve reads them from the cwd)"
    doc: dict[str, Any] = {"kind": C("parameter", "genome: a merge of whole models, searched per model, "
                                                  "layer group and filter")}
    doc["base_model"] = C(ref(base), (f"genome.{'base_model' if g.base_model else 'models[0]'}: slerp's "
                                      "t = 0 end" if moved == "slerp" else "genome.base_model") + f"; {where}")
    doc["models"] = C([ref(m) for m in models], "genome.models" + (
        " without base_model (mergekit-evolve gives the base genes too, which change nothing: task "
        "vectors are taken against it)" if moved == "base" else ""))
    normalize = "" if moved == "slerp" else (
        f"; genome.normalize: {str(_normalizes(method)).lower()}, evomerge's default for {method}")
    doc["methods"] = C([method], f"genome.merge_method: {method}{normalize}")
    doc["parameters"] = C(params, "the genes of mergekit-evolve's genome, per model" + (
        "; genome.smooth: true interpolates nothing across one layer group" if g.smooth else ""))
    gran: dict[str, Any] = {}
    if groups > 1:
        gran["layers_per_group"] = C(g.layer_granularity, f"genome.layer_granularity: {depth} layers in "
                                     f"{groups} groups, each with its own genes")
    if g.filters:
        gran["filters"] = C(list(g.filters), "genome.filters: own genes for tensors whose name holds each "
                            "filter, and for the rest ('other')")
    doc.update({"granularity": C(gran, "own genes per layer group and per tensor-name filter")} if gran else {})
    if depth is not None:
        doc["num_layers"] = C(depth, "the first model's layer count, as mergekit-evolve reads it" + (
            f"; genome.layer_granularity: {g.layer_granularity} covers them all: one group" if groups == 1 else ""))
    doc["dtype"] = C("bfloat16", "mergekit-evolve merges in bfloat16")
    doc["seed"] = C(0, "seeds DARE's masks (mergekit-evolve's --random-seed seeds its own generator: same law, other draws)")
    return doc


def _run_doc(cfg: EvolveConfig, opts: Options, genes: list[str], low: float, out: Path, fail) -> dict[str, Any]:
    import numpy as np

    for bad, field, text in ((opts.max_fevals < 1, "--max-fevals", "is not a positive number of merges"),
                             (opts.batch_size is not None and opts.batch_size < 1, "--batch-size", "is not a positive batch size"),
                             (opts.device not in ("cpu", "cuda"), "--device", "is neither cpu nor cuda")):
        if bad:
            raise fail(field, f"{getattr(opts, field[2:].replace('-', '_'))!r} {text}; give another.")
    slerp = cfg.genome.merge_method == "slerp"
    width = 1.0 if slerp else MAX_WEIGHT - low
    # slerp's t = sigmoid(the difference of two genes): its spread at t = 0.5 is sigma * sqrt(2) / 4
    sigma = opts.sigma0 * math.sqrt(2) / 4 if slerp else opts.sigma0 / width
    if not (math.isfinite(sigma) and 0 < sigma <= 1):
        raise fail("--sigma0", f"{opts.sigma0:g} is {sigma:g} of the genes' range, outside (0, 1] (evomerge's "
                   "CMA-ES steps in the unit cube); choose a smaller positive --sigma0.")
    paths = []
    for p in opts.task_search_path:
        if not Path(p).is_dir():
            raise fail("--task-search-path", f"{p} is no directory (of lm-eval task YAMLs); fix the path.")
        paths.append(os.path.relpath(os.path.abspath(p), os.path.abspath(out)))
    rng = np.random.default_rng(0) if cfg.random_init else None
    n, x0 = len(cfg.genome.models), []
    for name in genes:
        param = name.split("[")[0].rsplit(".", 1)[-1]
        if param == "t":
            x0.append(0.5 if rng is None else 1 / (1 + math.exp(rng.random() - rng.random())))
        elif param == "density":
            x0.append(1.0 if rng is None else rng.random())
        else:
            x0.append(((1 / n if rng is None else rng.random()) - low) / width)
    start = ("random_init: true: a uniform random start as mergekit-evolve draws one (every weight and "
             "density in [0, 1)), drawn at conversion with seed 0 (mergekit-evolve's is unseeded)"
             if cfg.random_init else f"random_init: false: mergekit-evolve's start, every weight 1/{n} "
             "(1/len(genome.models))" + ("" if slerp else " and density 1"))
    return {
        "space": C(SPACE_FILE, "genome: the search space, beside this file"),
        "objectives": C(_objectives(cfg, opts, paths, fail), (
            "tasks: lm-eval registry tasks, as mergekit-evolve scores them with lm_eval.simple_evaluate; "
            "top-level num_fewshot, apply_chat_template and fewshot_as_multiturn go on each. evomerge's "
            "search scores each task's validation documents (or a search part of a task with one "
            "evaluation split) and keeps the test documents for `evomerge eval`; mergekit-evolve scored "
            "lm-eval's default split")),
        "scalarization": C("weighted_sum", "mergekit-evolve maximises sum(weight * metric) over tasks"),
        "optimizer": C({"name": "cmaes", "options": {
            "sigma0": C(round(sigma, 6), f"--sigma0 {opts.sigma0:g}, in the genes' units there and in the "
                        "unit cube's here" + (": the spread of t it gives at the start" if slerp else
                                              f": the weights' range is {width:g} wide")),
            "x0": C([round(v, 6) for v in x0], f"{start}; unit-cube coordinates in gene order (`evomerge "
                    "space show`): write new ones if you edit the space"),
        }}, "CMA-ES (pycma), as mergekit-evolve"),
        "budget": C({"trials": opts.max_fevals}, f"--max-fevals {opts.max_fevals}: candidates evaluated "
                    "(mergekit-evolve's pycma may finish its last generation past it; evomerge stops here)"),
        "fidelity": C(cfg.limit, "limit unset: every document scored (shuffle then changes nothing)"
                      if cfg.limit is None else
                      f"limit: {cfg.limit} documents per task and candidate, a seeded random subset, the "
                      "same for every candidate: " + (
                          "shuffle: true (mergekit-evolve shuffled each worker's copy unseeded)" if cfg.shuffle
                          else f"with shuffle: false mergekit-evolve took each task's first {cfg.limit}")),
        "dtype": C("bfloat16", "mergekit-evolve evaluates its merges in bfloat16"),
        "device": C(opts.device, "--device at conversion (mergekit-evolve merges and evaluates on GPUs)"),
        "seed": C(0, "seeds CMA-ES and the subsets scored"),
    }


def _objectives(cfg: EvolveConfig, opts: Options, paths: list[str], fail) -> list[Any]:
    out, seen = [], {}
    for i, t in enumerate(cfg.tasks):
        metric, _, filt = (s.strip() for s in t.metric.partition(","))
        if not metric:
            raise fail(f"tasks[{i}].metric", f"{t.metric!r} names no metric; write it as lm-eval reports "
                       "it, metric,filter (e.g. acc,none).")
        if t.weight <= 0:
            raise fail(f"tasks[{i}].weight", f"{t.weight:g} cannot be converted: evomerge's weights are "
                       "positive shares of the weighted sum, and each objective is maximised or minimised "
                       "as lm-eval's higher_is_better says for its metric, so a lower-is-better metric "
                       "(perplexity) needs no negative weight: write its size. Leave out a task that "
                       "should not count.")
        if (t.name, metric, filt) in seen:
            raise fail(f"tasks[{i}]", f"repeats tasks[{seen[t.name, metric, filt]}] ({t.name}, {t.metric}); "
                       "give one entry whose weight is their sum.")
        seen[t.name, metric, filt] = i
        obj: dict[str, Any] = {"task": C(f"lm_eval:{t.name}", f"tasks[{i}]: {t.name}"),
                               "metric": C(metric, f"tasks[{i}].metric: {t.metric} (metric,filter)")}
        options = {"filter": (filt if filt and filt != "none" else None, f"tasks[{i}].metric's filter"),
                   "weight": (t.weight, f"tasks[{i}].weight"), "num_fewshot": (cfg.num_fewshot, "num_fewshot"),
                   "include_path": (paths or None, "--task-search-path, relative to this file's folder"),
                   "apply_chat_template": (cfg.apply_chat_template, "apply_chat_template (mergekit-evolve's "
                                           "default: true)"),
                   "fewshot_as_multiturn": (cfg.fewshot_as_multiturn, "fewshot_as_multiturn (mergekit-evolve's "
                                            "default: true)"),
                   "batch_size": (opts.batch_size, "--batch-size")}
        obj.update({key: C(value, why) for key, (value, why) in options.items() if value is not None})
        out.append(obj)
    return out
