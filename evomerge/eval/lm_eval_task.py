"""lm-eval harness tasks on local data, scoring a model object already in memory.

The task is an lm-eval YAML (``dataset_path: json`` with ``data_files`` per
split). Relative data paths are resolved against that YAML, the split being
scored becomes lm-eval's ``test_split``, and a fidelity level is passed as the
indices of a nested subset. Nothing touches the network: the hub is switched
to offline mode, bootstrapping is off and samples are not logged.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field

from evomerge.eval.base import (
    Direction,
    Evaluator,
    Objective,
    TaskConfig,
    check_finite,
    model_device,
    register_evaluator,
)
from evomerge.eval.data import TaskDataError, nested_subset


class LmEvalConfig(TaskConfig):
    task: str = Field(description="Path of an lm-eval task YAML, relative to this file.")
    metric: str = "exact_match"
    filter: str = "none"
    direction: Direction = "maximize"
    add_bos_token: bool = True
    max_length: int | None = Field(default=None, ge=8)


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


@register_evaluator("lm_eval")
class LmEvalTask(Evaluator):
    Config = LmEvalConfig
    config: LmEvalConfig

    @cached_property
    def task_config(self) -> dict[str, Any]:
        path = (self.root / self.config.task).resolve()
        if not path.is_file():
            raise TaskDataError(f"task: lm-eval YAML not found at {path}.")
        _offline()
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(path)
        files = cfg.get("dataset_kwargs", {}).get("data_files")
        if cfg.get("dataset_path") != "json" or not isinstance(files, dict):
            raise TaskDataError(
                f"{path}: evomerge runs lm-eval tasks on local data only; set "
                f"`dataset_path: json` and `dataset_kwargs: {{data_files: {{search: ..., test: ...}}}}`."
            )
        if self.split not in files:
            raise TaskDataError(
                f"{path}: data_files has no {self.split!r} split (it has {', '.join(files)})."
            )
        resolved = {}
        for split, f in files.items():
            p = Path(f) if Path(f).is_absolute() else (path.parent / f).resolve()
            if not p.is_file():
                raise TaskDataError(f"{path}: data_files.{split}: no file at {p}.")
            resolved[split] = str(p)
        cfg = dict(cfg)
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": resolved}
        cfg["test_split"] = self.split
        for key in ("validation_split", "training_split", "fewshot_split"):
            if cfg.get(key) not in (None, self.split) and cfg[key] not in resolved:
                cfg.pop(key)
        return cfg

    @cached_property
    def _size(self) -> int:
        path = self.task_config["dataset_kwargs"]["data_files"][self.split]
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())

    def size(self) -> int:
        return self._size

    def objectives(self) -> list[Objective]:
        return [Objective(self.config.metric, self.config.direction)]

    def _score(self, model, tokenizer, fidelity):
        cfg = self.task_config
        _offline()
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=self.config.batch_size,
            device=str(model_device(model)),
            add_bos_token=self.config.add_bos_token,
            max_length=self.config.max_length,
        )
        indices = None
        if fidelity is not None and fidelity < self.size():
            indices = {cfg["task"]: nested_subset(self.size(), fidelity, self.config.subset_seed)}
        # lm-eval calls the model itself: check every forward's logits, as our own evaluators do,
        # so a broken merge (NaN weights, overflow) fails instead of scoring 0.
        hook = model.register_forward_hook(lambda _m, _i, out: check_finite(getattr(out, "logits", out)))
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[cfg],
                task_manager=TaskManager(include_defaults=False),
                samples=indices,
                bootstrap_iters=0,
                log_samples=False,
                cache_requests=False,
            )
        finally:
            hook.remove()
        res = out["results"][cfg["task"]]
        key = f"{self.config.metric},{self.config.filter}"
        if key not in res:
            have = ", ".join(k for k in res if "," in k and not k.endswith("_stderr"))
            raise TaskDataError(f"lm-eval reported no {key!r} for {cfg['task']} (it has {have}).")
        n = len(indices[cfg["task"]]) if indices else self.size()
        return {self.config.metric: float(res[key])}, n
