"""lm-eval's task registry, read once per process, and the errors of loading from it.

Building lm-eval's index reads thousands of task YAMLs (seconds), so one ``TaskManager`` per
set of ``include_path`` directories is kept for the life of the process: a worker builds it
when it loads its tasks, never per evaluation. Loading a task reads its dataset through
``datasets`` (the cache first; the network only when not offline); a dataset that is neither
cached nor downloadable is reported by name with the command that fetches it, before any
candidate is merged.
"""

from __future__ import annotations

import difflib
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evomerge.errors import EvomergeError


class LmEvalTaskError(EvomergeError):
    """A registry name, an option or a dataset of an lm-eval task that cannot be used."""


_MANAGERS: dict[tuple, Any] = {}
_LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")  # datasets' packaged readers
_LOCK = threading.Lock()


def task_manager(include_path: tuple[str, ...] = (), *, defaults: bool = True):
    """The process's ``TaskManager`` for these extra task directories (and lm-eval's own tasks,
    unless ``defaults`` is false), built on first use."""
    paths = tuple(str(Path(p).resolve()) for p in include_path)
    key = (defaults, *paths)
    with _LOCK:
        tm = _MANAGERS.get(key)
        if tm is None:
            from lm_eval.tasks import TaskManager

            tm = TaskManager(include_path=list(paths) or None, include_defaults=defaults)
            _MANAGERS[key] = tm
    return tm


def needs_defaults(name: str, include_path: tuple[str, ...], *, where: str) -> bool:
    """Whether loading ``name`` needs lm-eval's own index (seconds to build): not when one of the
    ``include_path`` directories defines it. Refuses an unknown name."""
    if include_path and name in task_manager(include_path, defaults=False).task_index:
        return False
    check_name(name, include_path, where=where)
    return True


def check_name(name: str, include_path: tuple[str, ...], *, where: str) -> None:
    """Refuse a name that is no task, group or tag of lm-eval's index (with close names)."""
    tm = task_manager(include_path)
    if name in tm.task_index:
        return
    close = difflib.get_close_matches(name, tm.all_tasks, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    searched = f"lm-eval's own tasks and {', '.join(include_path)}" if include_path else "lm-eval's own tasks"
    raise LmEvalTaskError(
        f"{where}: {name!r} is not a task, group or tag of lm-eval's index ({searched}; "
        f"{len(tm.all_tasks)} names).{hint} Fix the name (`lm-eval ls tasks` lists them), or add the "
        f"directory of its YAML to `include_path`."
    )


def load_task_objects(spec: str | dict, include_path: tuple[str, ...], *, where: str,
                      defaults: bool = True) -> dict[str, Any]:
    """lm-eval's ``{"tasks": {name: Task}, "groups": ..., "group_map": ...}`` for one name, YAML
    path or config dict, with its datasets loaded."""
    tm = task_manager(include_path, defaults=defaults)
    try:
        from datasets import config

        if config.HF_HUB_OFFLINE:
            return tm.load([spec])
        try:  # the cache first: no request to the Hub for a dataset already here
            with _datasets_offline():
                return tm.load([spec])
        except Exception as e:  # noqa: BLE001 - not cached (or not whole): fetch it
            if _failing_dataset(e) is None:
                raise
        return tm.load([spec])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - datasets and lm-eval raise many kinds; name the cause
        dataset = _failing_dataset(e)
        if dataset is not None:
            raise LmEvalTaskError(_dataset_paragraph(where, dataset, e)) from None
        raise LmEvalTaskError(
            f"{where}: lm-eval could not load the task ({type(e).__name__}: {_one_line(e)}). "
            f"Check the task's YAML and its dataset."
        ) from None


@contextmanager
def _datasets_offline():
    """``datasets`` and ``huggingface_hub`` offline for a moment (both read their flag at call
    time): a cached dataset then loads without asking the Hub for a newer revision, so every
    process of a run reads the same documents."""
    from datasets import config
    from huggingface_hub import constants

    before = config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = before


def _failing_dataset(e: BaseException) -> tuple[str, str | None] | None:
    """The (path, name) of the dataset a task was loading when ``e`` was raised, if any."""
    from lm_eval.api.task import Task

    for frame, _ in traceback.walk_tb(e.__traceback__):
        obj = frame.f_locals.get("self")
        if isinstance(obj, Task) and getattr(obj, "DATASET_PATH", None):
            return str(obj.DATASET_PATH), obj.DATASET_NAME
    return None


def _dataset_paragraph(where: str, dataset: tuple[str, str | None], e: BaseException) -> str:
    from datasets import config

    path, name = dataset
    if path in _LOCAL_BUILDERS:  # local files (dataset_kwargs.data_files): no cache, no Hub
        return (f"{where}: the task's {path} data files cannot be read ({type(e).__name__}: {_one_line(e)}). "
                f"Fix `dataset_kwargs.data_files` in the task's YAML: absolute paths, or paths relative "
                f"to the directory the command runs in.")
    label = f"{path} ({name})" if name else path
    args = f"{path!r}" + (f", {name!r}" if name else "")
    if config.HF_HUB_OFFLINE:
        why = "it is not in the datasets cache and downloads are off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
        fix = (f"Fetch it once on a machine with network (`python -c \"import datasets; "
               f"datasets.load_dataset({args})\"`) and copy its cache (HF_HOME) here, or unset "
               f"HF_HUB_OFFLINE to let evomerge download it")
    else:
        why = f"datasets could not load it ({type(e).__name__}: {_one_line(e)})"
        fix = (f"Check the network and the dataset's name, or fetch it with `python -c \"import datasets; "
               f"datasets.load_dataset({args})\"` and run again")
    return f"{where}: the task's dataset {label} cannot be loaded: {why}. {fix}."


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")
