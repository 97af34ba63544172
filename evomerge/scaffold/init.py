"""``evomerge init``: a run config and a parameter space for the user's own models, from flags.

Why flags only: CI and remote shells have no terminal to prompt in, and a command line is what a
page, a script or an issue can hold. Everything is checked before anything is written (models,
methods, tasks, include paths, numbers, the output directory), each problem as one paragraph
naming the flag and the fix; then ``run.yaml`` and ``space.yaml`` appear together or not at all,
commented field by field, and ``evomerge search DIR/run.yaml --out RUN_DIR`` runs them as they are.

Tasks: a name in ``evaluators/tasks/`` or a task YAML's path is an evomerge task file; any other
name (or ``lm_eval:NAME``) is an lm-eval registry task, group or tag, written as an inline lm-eval
objective that the search resolves (``evomerge.eval.lm_eval_task``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evomerge.config.run import INLINE_LM_EVAL as LM_EVAL_PREFIX
from evomerge.errors import EvomergeError
from evomerge.scaffold.yaml_writer import Commented as C
from evomerge.scaffold.yaml_writer import render, write_files

RUN_FILE, SPACE_FILE = "run.yaml", "space.yaml"
DEFAULT_METHOD = "ties"
_LM_EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# What init searches per parameter: (low, high, what the value does). A method's own bounds and
# checks still apply (the space validates the box); where methods share a name, ranges intersect.
_RANGES: dict[str, tuple[float, float, str]] = {
    "weight": (0.0, 1.0, "how much of each model's task vector (or weights) enters the merge"),
    "density": (0.1, 1.0, "the fraction of each task vector kept"),
    "t": (0.0, 1.0, "where between the base (0) and the model (1) the merge lies"),
    "gamma": (0.0, 0.05, "the fraction of largest-magnitude entries dropped as outliers"),
    "select_topk": (0.1, 1.0, "the fraction of entries where the models vary most that is kept"),
    "pcb_ratio": (0.05, 0.5, "the fraction of entries kept by their PCB score"),
    "eta": (10.0, 90.0, "the percent of each task vector's nuclear norm its truncation keeps"),
    "common_space_fraction": (0.5, 1.0, "the share of directions taken from the summed task vectors"),
    "beta": (0.0, 1.0, "how much the deepest layers' scaling exceeds the shallowest"),
}
# Per method: a name other methods use otherwise (alpha), or a range its checks need (DELLA keeps
# density +- its default epsilon 0.15 inside (0, 1)).
_METHOD_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "della": {"density": (0.2, 0.8)}, "della_linear": {"density": (0.2, 0.8)}, "lines": {"alpha": (0.0, 1.0)},
    **{m: {"alpha": (0.5, 2.0)} for m in ("tsv", "iso_c", "iso_cts")},
}


class InitError(EvomergeError):
    pass


@dataclass
class InitOptions:
    out: Path
    base: str
    models: list[str]
    tasks: list[str]
    methods: list[str] = field(default_factory=lambda: [DEFAULT_METHOD])
    trials: int = 50
    include_paths: list[Path] = field(default_factory=list)
    num_fewshot: int | None = None
    apply_chat_template: bool = False
    fidelity: int | None = None
    optimizer: str = "tpe"
    workers: int = 1
    device: str = "cpu"
    dtype: str = "auto"
    layers_per_group: int | None = None
    seed: int = 0
    force: bool = False


@dataclass
class InitResult:
    files: list[Path]  # run.yaml, space.yaml
    notes: list[str]  # what the user should know (where Hub ids come from)


def split_values(values: list[str] | None) -> list[str]:
    """Repeated flags, each possibly comma-separated, as one list (empty parts dropped)."""
    return [part.strip() for v in values or [] for part in v.split(",") if part.strip()]


def init(opts: InitOptions) -> InitResult:
    """Check every flag, then write ``run.yaml`` and ``space.yaml`` into ``opts.out`` atomically."""
    out = Path(opts.out)
    _check_out(out, opts.force)
    _check_numbers(opts)
    base = _model_ref(opts.base, "--base")
    models = [_model_ref(m, "--models") for m in opts.models]
    if not models:
        raise InitError("--models names no model; give the models to merge onto --base, e.g. "
                        "`--models org/a --models org/b` or `--models org/a,org/b`.")
    for i, m in enumerate(models):
        if m == base or m in models[:i]:
            what = f"the base ({opts.base}) again" if m == base else f"{opts.models[i]} twice"
            raise InitError(f"--models names {what}; list each fine-tune once, and the base only as --base.")
    parameters = _parameters(opts.methods, len(models))
    objectives = _objectives(opts, out)
    dtype = opts.dtype if opts.dtype != "auto" else ("bfloat16" if opts.device.startswith("cuda") else "float32")
    files = {RUN_FILE: render(_run_doc(opts, objectives, dtype), _header(out)),
             SPACE_FILE: render(_space_doc(opts, base, models, parameters, dtype),
                                f"evomerge search space, written by `evomerge init` (search_spaces/README.md). "
                                f"`evomerge space show {out / SPACE_FILE}` lists its genes.")}
    _self_check(files, out)
    written = write_files(out, files, force=opts.force)
    notes = []
    if any(not Path(side).is_absolute() for ref in [base, *models] for side in ref.split("+")):
        from evomerge.io.hub import cache_dir

        notes.append(f"Hub ids are resolved when the search starts: from the cache {cache_dir()} "
                     "first, else downloaded (only the files a merge reads).")
    return InitResult(written, notes)


# --- checks ------------------------------------------------------------------------------------

def _check_out(out: Path, force: bool) -> None:
    """A run directory never; a non-empty one with --force (yaml_writer refuses a file)."""
    from evomerge.search.rundir import has_run

    if out.is_dir() and has_run(out):
        raise InitError(f"--out {out} holds a search run (its ledger); init never writes into one, "
                        "--force or not. Give another directory.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InitError(f"--out {out} is not empty; init would replace its {RUN_FILE} and "
                        f"{SPACE_FILE}. Give a new or empty directory, or add --force to replace them "
                        "(other files there are left alone).")


def _check_numbers(opts: InitOptions) -> None:
    from evomerge.search.optimizers.base import OPTIMIZERS

    for flag, value, low in (("--trials", opts.trials, 1), ("--workers", opts.workers, 1),
                             ("--fidelity", opts.fidelity, 1), ("--num-fewshot", opts.num_fewshot, 0),
                             ("--layers-per-group", opts.layers_per_group, 1)):
        if value is not None and value < low:
            raise InitError(f"{flag} {value} is below {low}; give a whole number of at least {low}.")
    if not _DEVICE.match(opts.device):
        raise InitError(f"--device {opts.device!r} is not a device; give cpu, cuda or cuda:N.")
    if opts.dtype not in DTYPES:
        raise InitError(f"--dtype {opts.dtype!r} is not one of {', '.join(DTYPES)} (auto: bfloat16 on "
                        "cuda, float32 on cpu).")
    if opts.optimizer not in OPTIMIZERS:
        raise InitError(f"--optimizer: {OPTIMIZERS.unknown_message(opts.optimizer)}")


def _model_ref(ref: str, flag: str) -> str:
    """``ref`` as the space should name it: a local directory as an absolute path (the space file
    is elsewhere), a Hub id as given; both sides of ``MODEL+ADAPTER``."""
    from evomerge.io.sources import split_adapter

    ref = ref.strip()
    if Path(ref).expanduser().exists() or "+" not in ref:
        return _side(ref, flag)
    try:
        model, adapter = split_adapter(ref)
    except EvomergeError as e:
        raise InitError(f"{flag}: {e}") from None
    return f"{_side(model, flag)}+{_side(adapter, flag, adapter=True)}"


def _side(ref: str, flag: str, *, adapter: bool = False) -> str:
    from evomerge.io.hub import offline, parse_hub_id, resolve_hub
    from evomerge.io.sources import is_bare_adapter

    what = "adapter" if adapter else "model"
    local = Path(ref).expanduser()
    if local.exists():
        need = "adapter_config.json" if adapter else "config.json"
        if not local.is_dir() or not (local / need).is_file():
            hint = (f" It is a PEFT LoRA adapter: name it after the model it adapts, `BASE+{ref}`."
                    if local.is_dir() and not adapter and is_bare_adapter(local) else "")
            raise InitError(f"{flag}: {ref} is not a {what} directory (no {need} in it).{hint} Give a "
                            f"directory holding {need} and safetensors weights, or a Hub id org/name.")
        return str(local.resolve())
    hub_id = parse_hub_id(ref)
    if hub_id is None:
        raise InitError(f"{flag}: {what} {ref!r} is neither a local directory (relative to "
                        f"{Path.cwd()}) nor a Hugging Face Hub id (org/name or org/name@revision). "
                        "Fix the path, or give the Hub id.")
    if offline():  # the search could not download it either: say so now
        try:
            resolve_hub(hub_id, adapter=adapter)
        except EvomergeError as e:
            raise InitError(f"{flag}: {e}") from None
    return ref


def _parameters(methods: list[str], n_models: int) -> dict[str, tuple[float, float, str]]:
    """The searched ranges the methods take, or an error naming --method."""
    from evomerge.merge.registry import get_method
    from evomerge.methods import METHODS

    if not methods:
        raise InitError(f"--method names no method; give one, e.g. --method {DEFAULT_METHOD}.")
    names = METHODS.names()
    ranges: dict[str, tuple[float, float, str]] = {}
    for name in methods:
        if name not in names:
            raise InitError(f"--method: {METHODS.unknown_message(name)}")
        if methods.count(name) > 1:
            raise InitError(f"--method names {name} twice; list each method once.")
        spec = get_method(name)
        low_n, high_n = spec.min_inputs, spec.max_inputs
        if n_models < low_n or (high_n is not None and n_models > high_n):
            wanted = (f"exactly {low_n}" if high_n == low_n else f"at least {low_n}" if high_n is None
                      else f"{low_n} to {high_n}")
            raise InitError(f"--method {name} merges {wanted} model(s) and --models gives {n_models}; "
                            f"give {wanted}, or another method (ties, dare_ties, task_arithmetic and "
                            "linear take any number).")
        for p in spec.params:
            if p.inert or p.type not in (float, int):
                continue
            own = _METHOD_RANGES.get(name, {}).get(p.name)
            known = _RANGES.get(p.name)
            if own is None and known is None:
                continue
            low, high = own or known[:2]
            text = known[2] if known else "the scale of the merged task vector"
            if p.name in ranges:  # the box must suit every method that takes it
                low, high = max(low, ranges[p.name][0]), min(high, ranges[p.name][1])
            ranges[p.name] = (low, high, text)
    if not ranges and len(methods) == 1:
        raise InitError(f"--method {methods[0]} has no parameter init searches, so the space would have "
                        f"nothing to search. Choose a method with weights or densities (ties, dare_ties, "
                        f"task_arithmetic, linear, della, ...), or add one beside it (--method "
                        f"{methods[0]},{DEFAULT_METHOD}: a gene then picks the method).")
    return ranges


def _objectives(opts: InitOptions, out: Path) -> list[dict]:
    lm_options: dict = {}
    if opts.num_fewshot is not None:
        lm_options["num_fewshot"] = opts.num_fewshot
    if opts.include_paths:
        lm_options["include_path"] = [_include_path(p, out) for p in opts.include_paths]
    if opts.apply_chat_template:
        lm_options["apply_chat_template"] = True
    objectives = [_objective(t, lm_options) for t in opts.tasks]
    if not objectives:
        raise InitError("--tasks names no task; give what the search maximises, e.g. "
                        "`--tasks arc_easy --tasks hellaswag` (lm-eval tasks) or a task file.")
    seen = [o["task"] for o in objectives]
    for i, task in enumerate(seen):
        if task in seen[:i]:
            raise InitError(f"--tasks names {opts.tasks[i]} twice; list each task once.")
    if lm_options and not any(t.startswith(LM_EVAL_PREFIX) for t in seen):
        flags = {"num_fewshot": "--num-fewshot", "include_path": "--include-path",
                 "apply_chat_template": "--apply-chat-template"}
        raise InitError(f"{', '.join(flags[k] for k in lm_options)} applies to lm-eval tasks, and none "
                        f"of --tasks ({', '.join(opts.tasks)}) is one; drop it, or name an lm-eval task.")
    return objectives


def _include_path(path: Path, out: Path) -> str:
    path = Path(path).expanduser()
    if not path.is_dir() or not any(path.rglob("*.yaml")):
        raise InitError(f"--include-path {path}: {'holds no lm-eval task YAML' if path.is_dir() else 'no such directory'}"
                        "; give a directory of lm-eval task YAMLs (each with a `task:` name).")
    # The objective's include_path is relative to the run config's directory.
    return os.path.relpath(path.resolve(), out.resolve())


def _objective(task: str, lm_options: dict) -> dict:
    from evomerge.eval.task import evaluators_dir, load_task, task_names

    if task.startswith(LM_EVAL_PREFIX):
        name = task[len(LM_EVAL_PREFIX):]
        if not _LM_EVAL_NAME.match(name):
            raise InitError(f"--tasks {task!r}: {name!r} is not an lm-eval task name (letters, digits, "
                            "'_', '-', '.'); give it as lm-eval lists it (`lm-eval ls tasks`).")
        return {"task": task, **lm_options}
    path = Path(task).expanduser()
    named = evaluators_dir() / "tasks" / f"{task}.yaml"
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise InitError(f"--tasks {task}: no task file at {path.resolve()}; fix the path, or give "
                            "an lm-eval task name.")
        ref = str(path.resolve())  # tasks are found from the working directory: an absolute path
    elif named.is_file():
        ref = task
    elif _LM_EVAL_NAME.match(task):
        return {"task": LM_EVAL_PREFIX + task, **lm_options}
    else:
        raise InitError(f"--tasks {task!r} is neither an evomerge task (a name in {named.parent}: "
                        f"{', '.join(task_names())}; or a task YAML's path) nor an lm-eval task name "
                        "(letters, digits, '_', '-', '.'). Fix the name or the path.")
    try:  # the file and its fields; its data (or dataset) is read when the search starts
        load_task(ref, split="search", fitness=True, validate=False)
    except EvomergeError as e:
        hint = _lm_eval_yaml_hint(path) if path.is_file() else ""
        raise InitError(f"--tasks {task}: {e}{hint}") from None
    return {"task": ref}


def _lm_eval_yaml_hint(path: Path) -> str:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):  # lm-eval YAMLs may hold !function tags
        raw = None
    lm_eval = isinstance(raw, dict) and "task" in raw and "type" not in raw
    return (f" It looks like an lm-eval task YAML: give its folder and its name instead, `--include-path "
            f"{path.parent} --tasks {raw['task']}`." if lm_eval else "")


# --- the files ---------------------------------------------------------------------------------

def _space_doc(opts: InitOptions, base: str, models: list[str], parameters: dict, dtype: str) -> dict:
    doc = {
        "kind": "parameter",
        "base_model": C(base, "The model the others were fine-tuned from: task vectors are (model - base)."),
        "models": C(models, "The fine-tunes merged onto it: directories (absolute paths), Hub ids "
                    "org/name[@revision] (from the Hugging Face cache, else downloaded), or MODEL+ADAPTER "
                    "(a PEFT LoRA adapter on a model)."),
        "methods": C(opts.methods, "One merge method, or several (a gene then picks one per recipe): any "
                     "method whose input count fits the models (README, \"Methods\"), e.g. "
                     "[task_arithmetic, ties, dare_ties]."),
        "parameters": C({n: C({"low": lo, "high": hi}, f"{n}: {text}") for n, (lo, hi, text) in parameters.items()},
                        "The searched ranges: one gene per model for a per-model parameter, one per merge "
                        "for a shared one. Narrow a range to search less, or add any parameter the "
                        "methods take."),
    }
    if opts.layers_per_group:
        doc["granularity"] = C({"layers_per_group": opts.layers_per_group},
                               "Values of their own per group of this many layers (add filters: [self_attn, "
                               "mlp] for attention and MLP apart); the depth is read from the base.")
    per = "" if opts.layers_per_group else (" Values are per model for the whole network; `granularity: "
                                            "{layers_per_group: 8}` gives each group of 8 layers its own.")
    doc["dtype"] = C(dtype, f"The merge's compute dtype.{per}")
    doc["seed"] = C(opts.seed, "The seed of DARE's and DELLA's random masks.")
    return doc


def _run_doc(opts: InitOptions, objectives: list[dict], dtype: str) -> dict:
    fidelity = ("Examples scored per task and trial (fewer: faster and noisier). " if opts.fidelity else
                "Every example of each task is scored; add `fidelity: 200` to score 200 per task and "
                "trial (fewer: faster and noisier). ")
    doc = {
        "space": C(SPACE_FILE, "The search space (models, methods, ranges): the file beside this one."),
        "objectives": C(objectives, "What the search maximises. task: an evomerge task (a name in "
                        "evaluators/tasks/, or a task YAML's path) or lm_eval:NAME, a task, group or tag of "
                        "lm-eval's registry or of include_path (relative to this file). Optional: metric "
                        "(default: the task's first), weight (its share of the sum that picks the best "
                        "trial), and lm-eval's own options: num_fewshot, include_path, apply_chat_template, "
                        "fewshot_as_multiturn, system_instruction, gen_kwargs, batch_size, filter."),
        "optimizer": C({"name": opts.optimizer}, "tpe is told every objective (a Pareto search); cmaes "
                       "optimises their weighted sum; gp, nsga2 and random also work (README, \"Search\")."),
        "budget": C({"trials": opts.trials}, "Candidate recipes evaluated; `evomerge resume RUN_DIR "
                    "--trials N` goes on past it."),
    }
    note = (fidelity + "Successive halving scores every trial cheaply and the best on more: "
            "multi_fidelity: {levels: [100, 300, null]} instead of fidelity (null: all; no level above a "
            "task's size).")
    if opts.fidelity:
        doc["fidelity"] = C(opts.fidelity, note)
    else:
        doc["budget"] = C(doc["budget"].value, f"{doc['budget'].comment} {note}")
    doc |= {
        "executor": C({"workers": opts.workers}, "Evaluations at once: each worker holds every source "
                      "model and the merge (memory!)."),
        "device": C(opts.device, "cpu, cuda or cuda:N."),
        "dtype": C(dtype, "Of the models in each worker; bfloat16 halves float32's memory."),
        "seed": C(opts.seed, "The optimiser's: the same seed proposes the same trials."),
    }
    return doc


def _header(out: Path) -> str:
    return "\n".join([
        "evomerge run config, written by `evomerge init`. From the directory init ran in:",
        f"  evomerge search --dry-run {out / RUN_FILE}   (checks it all, estimates the time)",
        f"  evomerge search {out / RUN_FILE} --out {out / 'output'}",
        f"  evomerge front {out / 'output'}   (the Pareto front)",
        f"  evomerge export {out / 'output'} --out {out / 'model'} [--trial N]",
    ])


def _self_check(files: dict[str, str], out: Path) -> None:
    """The texts parse into what they mean: the space's fields (without reading models) and the
    run config's. A failure here names the flags that led to it."""
    from evomerge.config.run import RunConfig
    from evomerge.search.space import ParameterSpace

    space = yaml.safe_load(files[SPACE_FILE])
    if "granularity" in space:  # the depth is read from the base when the search loads the space
        space["num_layers"] = space["granularity"]["layers_per_group"]
    try:
        ParameterSpace.from_raw(space, out / SPACE_FILE, resolve=False)
    except EvomergeError as e:
        raise InitError(f"--method/--models: {e}") from None
    RunConfig.model_validate(yaml.safe_load(files[RUN_FILE]))  # flags are checked: failing is a bug
