"""evomerge's older local form of an lm-eval task: ``dataset_path: json`` with one data file per
evomerge split (``search``, ``test``), resolved against the YAML.

The split being scored becomes lm-eval's ``test_split``; the other files stay available as
few-shot or training splits only under names that are not the scored one. Such a task needs no
split guard: its two files are the two splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.eval.data import TaskDataError


def _load(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path)


def is_local_form(path: Path) -> bool:
    cfg = _load(path)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    return cfg.get("dataset_path") == "json" and isinstance(files, dict) and "search" in files


def local_task_config(path: Path, split: str) -> dict[str, Any]:
    """The task's lm-eval config, data files absolute, scoring ``split``."""
    cfg = dict(_load(path))
    files = cfg["dataset_kwargs"]["data_files"]
    if split not in files:
        raise TaskDataError(f"{path}: data_files has no {split!r} split (it has {', '.join(files)}).")
    resolved = {}
    for name, f in files.items():
        p = Path(f) if Path(f).is_absolute() else (path.parent / f).resolve()
        if not p.is_file():
            raise TaskDataError(f"{path}: data_files.{name}: no file at {p}.")
        resolved[name] = str(p)
    cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": resolved}
    cfg["test_split"] = split
    for key in ("validation_split", "training_split", "fewshot_split"):
        if cfg.get(key) not in (None, split) and cfg[key] not in resolved:
            cfg.pop(key)
    return cfg
