"""Finding, validating and building tasks from their YAML configs.

A task is named by a file in ``evaluators/tasks/`` (``--task addition``) or by a
path to any YAML. Configs are validated in full before anything is scored, and
errors name the file and the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evomerge.errors import EvomergeError
from evomerge.eval.base import EVALUATORS, Evaluator
from evomerge.validation import problems, read_yaml_file

SPLITS = ("search", "test")
INLINE_LM_EVAL = "lm_eval:"  # `lm_eval:arc_easy`: an lm-eval registry task, no task file needed


class TaskConfigError(EvomergeError):
    pass


class SplitLeakError(EvomergeError):
    pass


def evaluators_dir() -> Path:
    """``$EVOMERGE_EVALUATORS`` or the repository's ``evaluators/``."""
    env = os.environ.get("EVOMERGE_EVALUATORS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "evaluators"


def task_names() -> list[str]:
    d = evaluators_dir() / "tasks"
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def find_task(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise TaskConfigError(f"Task config {p} does not exist.")
        return p.resolve()
    candidate = evaluators_dir() / "tasks" / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    import difflib

    names = task_names()
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise TaskConfigError(
        f"Unknown task {name_or_path!r}.{hint} Known tasks (in {candidate.parent}): "
        f"{', '.join(names) or 'none'}; or pass the path of a task YAML."
    )


def absolute_include_path(options: dict[str, Any], root: Path) -> dict[str, Any]:
    """``options`` with an inline lm-eval task's ``include_path`` (one path or a list) made
    absolute against ``root`` (the run config's directory)."""
    paths = options.get("include_path")
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list):
        return options
    return {**options, "include_path": [str((root / str(p)).resolve()) for p in paths]}


def inline_ref(task: str, options: dict[str, Any], root: Path) -> str:
    """The ref of an inline lm-eval task (``lm_eval:NAME`` with options), paths made absolute
    against ``root`` (the run config's directory), so any process loads the same task from it."""
    if not task.startswith(INLINE_LM_EVAL) or not options:
        return task
    options = absolute_include_path(options, root)
    return INLINE_LM_EVAL + json.dumps({"task": task[len(INLINE_LM_EVAL):], **options}, sort_keys=True)


def _inline_config(ref: str) -> dict[str, Any]:
    rest = ref[len(INLINE_LM_EVAL):].strip()
    if rest.startswith("{"):
        return {"type": "lm_eval", **json.loads(rest)}
    if not rest:
        raise TaskConfigError(f"Task {ref!r}: name an lm-eval task after `lm_eval:`, e.g. lm_eval:arc_easy.")
    return {"type": "lm_eval", "task": rest}


def load_task(
    name_or_path: str,
    *,
    split: str = "search",
    fitness: bool = False,
    allow_test_split: bool = False,
    validate: bool = True,
) -> Evaluator:
    """Build the evaluator of one task on one split.

    ``fitness=True`` marks a task a search optimises: the ``test`` split is then
    refused unless ``allow_test_split`` says the user means it, because a
    recipe tuned on the test split reports a score nobody should believe.
    ``validate`` reads the task's data now, so errors surface before any scoring.
    """
    if split not in SPLITS:
        raise TaskConfigError(f"split {split!r} is not one of {', '.join(SPLITS)}.")
    if fitness and split == "test" and not allow_test_split:
        raise SplitLeakError(
            f"Task {name_or_path!r}: the 'test' split is held out for reporting and cannot be a "
            f"search's fitness. Optimise on 'search' (split: search in the run config), or set "
            f"`allow_test_split: true` in the run config if you really mean to tune on the test "
            f"split (its scores then no longer measure generalisation)."
        )
    inline = name_or_path.startswith(INLINE_LM_EVAL)
    if inline:
        raw = _inline_config(name_or_path)
        path = Path.cwd() / "lm_eval.yaml"  # its parent is the root; its paths are already absolute
        where = f"objective task {raw['task']!r} (lm_eval:)"
    else:
        path = find_task(name_or_path)
        raw = read_yaml_file(path, what="task config", examples="evaluators/tasks/ holds working examples",
                             error=TaskConfigError)
        where = str(path)
    if not isinstance(raw, dict) or "type" not in raw:
        raise TaskConfigError(
            f"{where}: a task config is a mapping with a `type` field "
            f"({', '.join(EVALUATORS.names())})."
        )
    if raw["type"] not in EVALUATORS:
        raise TaskConfigError(f"{where}: type: {EVALUATORS.unknown_message(str(raw['type']))}")
    cls = EVALUATORS.get(raw["type"])
    try:
        config = cls.Config.model_validate(raw)
    except ValidationError as e:
        raise TaskConfigError(
            f"{where}: invalid {raw['type']} task config: {problems(e, model=cls.Config)}."
        ) from None
    default_name = raw["task"] if inline else path.stem
    evaluator = cls(config, name=config.name or default_name, split=split, root=path.parent)
    # How a worker in another process loads this task again: by name (from its own
    # evaluators/), or by the absolute path of a YAML given as a path.
    given = Path(name_or_path)
    evaluator.ref = str(path) if not inline and (given.suffix in (".yaml", ".yml") or given.is_file()) else name_or_path
    if validate:
        evaluator.validate()
    return evaluator
