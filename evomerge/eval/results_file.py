"""``evomerge eval --output FILE.json``: the scores in lm-eval's results format, for every task kind.

Tools that read lm-eval's output (``lm_eval.utils.make_table``, leaderboards, notebooks) read
the dict ``simple_evaluate`` returns, written as ``lm_eval --output_path`` writes it: per task
``results[task]["<metric>,<filter>"]`` with its ``"<metric>_stderr,<filter>"``, ``alias``,
``name`` and ``sample_len``; ``configs``, ``versions``, ``n-shot``, ``higher_is_better``,
``n-samples``; the run's ``config``; environment and tokenizer facts; and the fields lm-eval's
``EvaluationTracker`` adds to the file. Samples are not written.

- An lm-eval task is reported under lm-eval's own name with lm-eval's own config dump, version,
  n-shot and document count (the task objects evomerge scored with, after the run), so the file
  matches ``simple_evaluate``'s for the same task and model. Its stderr is "N/A", as
  ``simple_evaluate`` reports it with ``bootstrap_iters=0``, which evomerge runs with.
- Any other task is reported under its evomerge name: one ``<objective>,none`` per objective,
  its stderr the standard error of the mean where the task reports each example's outcome (the
  value being their mean), else "N/A"; its config is a short lm-eval-shaped one.
- Every task's ``configs[...]["metadata"]["evomerge"]`` says what evomerge ran: the task file,
  type, split, fidelity (a nested seeded subset of that many examples; ``config.limit`` holds
  it too, so a reader sees the score is not on every document) and options.

The file is written whole or not at all (``atomic_write_text``), and only when every task scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from evomerge.errors import EvomergeError
from evomerge.eval.base import EvalResult, Evaluator
from evomerge.io.atomic import atomic_write_text

# simple_evaluate's defaults, which evomerge's lm-eval tasks run with (evomerge's own are greedy).
SEEDS = {"random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234}
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's HFLM, for a model whose config names no length
_UNSET_MODEL_MAX_LENGTH = 1000000000000000019884624838656  # transformers' "no limit"


class ResultsFileError(EvomergeError):
    """An ``--output`` path that cannot take a results file."""


def check_output_path(path: Path) -> Path:
    """Refuse, before anything is scored, a results path that cannot or should not be written:
    not ``*.json``, a directory, under a missing directory, or an existing file that is not an
    lm-eval results file (replacing it would lose something else)."""
    path = Path(path)
    fix = "Give --output a new FILE.json in an existing directory (or an earlier results file to replace)."
    if path.is_dir():
        raise ResultsFileError(f"--output {path} is a directory; the results go to one file. {fix}")
    if path.suffix.lower() != ".json":
        raise ResultsFileError(f"--output {path} does not end in .json; the results file is JSON "
                               f"(lm-eval's results format). {fix}")
    if not path.parent.is_dir():
        what = "is a file" if path.parent.exists() else "does not exist"
        raise ResultsFileError(f"--output {path}: its directory {path.parent} {what}. Create that "
                               f"directory first (mkdir -p {path.parent}), or give --output a "
                               f"FILE.json in an existing directory.")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ResultsFileError(f"--output {path}: its directory {path.parent} cannot be written "
                               f"(permissions). {fix}")
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if not (isinstance(previous, dict) and isinstance(previous.get("results"), dict)):
            raise ResultsFileError(f"--output {path} exists and is not an lm-eval results file (no "
                                   f"\"results\" mapping in it); it is left as it is. {fix}")
    return path


def results_document(model_ref: str, model, tokenizer, evaluators: list[Evaluator],
                     results: list[EvalResult], *, device: str, fidelity: int | None,
                     started: float, seconds: float) -> dict[str, Any]:
    """The results of ``evaluators`` (``results``, in the same order, all ok) for ``model``, as
    lm-eval's CLI writes them; ``started`` is the wall-clock start (``time.time()``), ``seconds``
    how long it took."""
    entries = [_entry(ev, r) for ev, r in zip(evaluators, results, strict=True)]
    names = _unique([e["name"] for e in entries], [ev.name for ev in evaluators])
    doc: dict[str, Any] = {
        "results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
        "higher_is_better": {}, "n-samples": {},
    }
    for name, e in zip(names, entries, strict=True):
        doc["results"][name] = {"name": name, "alias": e["alias"], "sample_len": e["sample_len"], **e["metrics"]}
        doc["configs"][name] = e["config"]
        doc["versions"][name] = e["version"]
        doc["n-shot"][name] = e["n_shot"]
        doc["higher_is_better"][name] = e["higher_is_better"]
        doc["n-samples"][name] = {"original": e["original"], "effective": e["sample_len"]}
    for ev in evaluators:
        _add_group_leaves(doc, ev)
    for key in ("configs", "versions", "n-shot", "higher_is_better"):
        doc[key] = dict(sorted(doc[key].items()))
    doc["config"] = {
        "model": model_ref, "model_args": None, **_model_info(model_ref, model),
        "batch_size": None, "batch_sizes": [], "device": device, "use_cache": None,
        "limit": fidelity, "bootstrap_iters": 0, "gen_kwargs": None, **SEEDS,
    }
    doc.update({"git_hash": None, "date": started, **_environment(), **_tokenizer_info(model, tokenizer)})
    doc.update(_tracker_fields(model_ref, evaluators, tokenizer, seconds))
    return doc


def write_results_file(path: Path, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2, default=_jsonable, ensure_ascii=False) + "\n"
    try:
        atomic_write_text(Path(path), text)
    except OSError as e:  # a full disk, a directory removed meanwhile: nothing is left half-written
        raise ResultsFileError(f"--output {path} could not be written ({e.strerror or e}); nothing was "
                               f"written there. Free space or choose another FILE.json, and run again.") from e


# -- one task --------------------------------------------------------------------------------
def _entry(ev: Evaluator, res: EvalResult) -> dict[str, Any]:
    from evomerge.eval.lm_eval_task import LmEvalTask

    # LmEvalTask keeps the lm-eval task objects it scored with; its entry is lm-eval's own.
    entry = _lm_eval_entry(ev, res) if isinstance(ev, LmEvalTask) else _own_entry(ev, res)
    evomerge = {"task": ev.ref or ev.name, "name": ev.name, "type": ev.config.type, "split": ev.split,
                "fidelity": res.fidelity, "examples": res.n_examples, "seconds": res.seconds,
                "options": ev.config.model_dump(mode="json")}
    entry["config"]["metadata"] = {**(entry["config"].get("metadata") or {}), "evomerge": evomerge}
    return entry


def _lm_eval_entry(ev, res: EvalResult) -> dict[str, Any]:
    """lm-eval's own view of the task, from the task objects evomerge scored with (its result
    name is the group, task or tag lm-eval reports the score under)."""
    name = ev.result_name
    metric = ev.objectives()[0].name
    metrics = {f"{metric},{ev.config.filter}": res.values[metric],
               f"{metric}_stderr,{ev.config.filter}": "N/A"}  # bootstrap_iters=0, as scored
    task = ev.lm_eval_tasks().get(name)
    if task is None:  # a group or a tag: evomerge scored one value for it, their mean
        return {"name": name, "alias": name, "sample_len": res.n_examples, "metrics": metrics,
                "config": {"task": name, "metadata": {"version": None}}, "version": None,
                "n_shot": ev.config.num_fewshot or 0,
                "higher_is_better": {metric: ev.objectives()[0].direction == "maximize"},
                "original": int(ev.cost(None))}
    config = json.loads(json.dumps(dict(task.dump_config()), default=_jsonable))
    return {"name": name, "alias": config.get("task_alias", name), "sample_len": res.n_examples,
            "metrics": metrics, "config": config, "version": task.VERSION,
            "n_shot": config.get("num_fewshot", 0), "higher_is_better": task.higher_is_better(),
            "original": len(task.eval_docs)}


def _add_group_leaves(doc: dict[str, Any], ev: Evaluator) -> None:
    """An lm-eval group's tasks beside the group, as lm-eval reports them (from the report the
    evaluator kept of its scoring), and the group's subtasks."""
    report = getattr(ev, "last_report", None)
    group = getattr(ev, "result_name", None)
    if not report or group not in (report.get("group_subtasks") or {}):
        return
    doc["group_subtasks"][group] = list(report["group_subtasks"][group])
    for leaf in report["group_subtasks"][group]:
        if leaf in doc["results"]:  # also scored as a task of its own: that entry stays
            continue
        doc["results"][leaf] = report["results"][leaf]
        for key in ("configs", "versions", "n-shot", "higher_is_better", "n-samples"):
            if leaf in (report.get(key) or {}):
                doc[key][leaf] = report[key][leaf]


def _own_entry(ev: Evaluator, res: EvalResult) -> dict[str, Any]:
    directions = {o.name: o.direction == "maximize" for o in ev.objectives()}
    scored = (res.details.get("per_example") or {}) if ev.per_example else {}
    outcomes = scored.get("outcomes", {})
    metrics: dict[str, Any] = {}
    for name, value in res.values.items():
        metrics[f"{name},none"] = value
        metrics[f"{name}_stderr,none"] = _stderr_of_mean(outcomes.get(name))
    size = ev.size()
    config = {
        "task": ev.name, "description": ev.config.description, "num_fewshot": 0,
        "metric_list": [{"metric": m, "aggregation": "mean" if m in outcomes else None,
                         "higher_is_better": directions.get(m)} for m in res.values],
        "metadata": {"version": None},
    }
    return {"name": ev.name, "alias": ev.name, "sample_len": res.n_examples, "metrics": metrics,
            "config": config, "version": None, "n_shot": 0,
            "higher_is_better": {m: directions.get(m) for m in res.values},
            "original": size if size is not None else res.n_examples}


def _stderr_of_mean(outcomes: list[float] | None) -> float | str:
    """lm-eval's ``mean_stderr``: the sample standard deviation over sqrt(n)."""
    if not outcomes or len(outcomes) < 2:
        return "N/A"
    n = len(outcomes)
    mean = sum(outcomes) / n
    return math.sqrt(sum((x - mean) ** 2 for x in outcomes) / (n - 1) / n)


def _unique(names: list[str], fallbacks: list[str]) -> list[str]:
    """Entry names, each once: a second task under the same name goes by its evomerge name, then
    by that name with a number."""
    out: list[str] = []
    for name, fallback in zip(names, fallbacks, strict=True):
        candidate, k = name if name not in out else fallback, 2
        while candidate in out:
            candidate, k = f"{fallback} ({k})", k + 1
        out.append(candidate)
    return out


# -- the model and the environment -----------------------------------------------------------
def _model_info(model_ref: str, model) -> dict[str, Any]:
    """lm-eval's ``get_model_info``: parameters, dtype, the revision asked for and the commit."""
    from evomerge.io.hub import parse_hub_id, snapshot_identity

    hub_id = None if Path(model_ref).exists() else parse_hub_id(model_ref.split("+")[0])
    identity = snapshot_identity(getattr(model.config, "_name_or_path", "") or "")
    return {
        "model_num_parameters": int(model.num_parameters()),
        "model_dtype": str(model.dtype),
        "model_revision": (hub_id.revision if hub_id and hub_id.revision else "main"),
        "model_sha": identity[1] if identity else "",
    }


def _environment() -> dict[str, Any]:
    """lm-eval's ``add_env_info``, with a short environment line instead of torch's collect_env
    report (a dozen subprocesses, seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "N/A"

    import torch

    env = (f"evomerge {installed('evomerge')}; PyTorch {torch.__version__}; Python "
           f"{sys.version.split()[0]}; {platform.platform()}")
    return {"pretty_env_info": env, "transformers_version": installed("transformers"),
            "lm_eval_version": installed("lm_eval"), "upper_git_hash": None}


def _tokenizer_info(model, tokenizer) -> dict[str, Any]:
    """lm-eval's ``add_tokenizer_info`` for its HFLM over this model and tokenizer."""
    return {
        "tokenizer_pad_token": [tokenizer.pad_token, str(tokenizer.pad_token_id)],
        "tokenizer_eos_token": [tokenizer.eos_token, str(tokenizer.eos_token_id)],
        "tokenizer_bos_token": [tokenizer.bos_token, str(tokenizer.bos_token_id)],
        "eot_token_id": tokenizer.eos_token_id,
        "max_length": _max_length(model, tokenizer),
    }


def _max_length(model, tokenizer) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit != _UNSET_MODEL_MAX_LENGTH else _DEFAULT_MAX_LENGTH


def _tracker_fields(model_ref: str, evaluators: list[Evaluator], tokenizer, seconds: float) -> dict[str, Any]:
    """What lm-eval's ``EvaluationTracker`` adds to the file it writes. The chat fields are the
    lm-eval tasks' own when they all agree (each task's are in its ``metadata.evomerge``)."""
    from evomerge.eval.lm_eval_task import LmEvalTask

    options = [ev.config for ev in evaluators if isinstance(ev, LmEvalTask)]
    system = _common([o.system_instruction for o in options])
    multiturn = _common([o.fewshot_as_multiturn for o in options])
    chat = _common([o.apply_chat_template for o in options])
    template = None
    if chat:
        try:
            template = tokenizer.get_chat_template(chat if isinstance(chat, str) else None)
        except (ValueError, TypeError):
            template = None
    return {
        "task_hashes": {}, "model_source": "hf", "model_name": model_ref,
        "model_name_sanitized": re.sub(r"[\"<>:/|\\?*\[\]]+", "__", model_ref),
        "system_instruction": system, "system_instruction_sha": _sha(system),
        "fewshot_as_multiturn": multiturn, "chat_template": template, "chat_template_sha": _sha(template),
        "total_evaluation_time_seconds": str(seconds),
    }


def _common(values: list[Any]) -> Any:
    distinct = {json.dumps(v) for v in values}
    return values[0] if len(distinct) == 1 else None


def _sha(text: str | None) -> str | None:
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text else None


def _jsonable(o: Any) -> Any:
    """What json cannot write as it is (numpy scalars, sets, dtypes, callables): as lm-eval's
    ``handle_non_serializable`` writes them."""
    if hasattr(o, "item") and callable(o.item):
        try:
            return o.item()
        except (TypeError, ValueError):
            pass
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)
