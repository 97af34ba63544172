"""lm-eval harness tasks, scoring a model object already in memory.

``task:`` is an lm-eval registry name (a task, group or tag of lm-eval 0.4.x, or one found
under ``include_path``) or the path of a task YAML. lm-eval's own options keep their lm-eval
names (``num_fewshot``, ``fewshot_as_multiturn``, ``apply_chat_template``, ...) and go to
``simple_evaluate`` as they are, so a score is the one lm-eval reports for the same model. The
task objects are built once per evaluator (lm-eval's index once per process), their documents
divided by the split guard (``evomerge.eval.lm_eval_splits``); a fidelity level is a nested,
seeded subset of the scored documents (stratified by label for multiple choice).

A YAML in evomerge's older local form (``dataset_path: json`` with ``search``/``test`` data
files) keeps its meaning: the split being scored is its data file of that name.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from evomerge.eval.base import (
    Direction,
    Evaluator,
    Objective,
    TaskConfig,
    check_finite,
    model_device,
    register_evaluator,
)
from evomerge.eval.data import TaskDataError
from evomerge.eval.lm_eval_index import (
    LmEvalTaskError,
    load_task_objects,
    needs_defaults,
    task_manager,
)
from evomerge.eval.lm_eval_local import is_local_form, local_task_config
from evomerge.eval.lm_eval_splits import guard_task, labels, stratified_subset


class LmEvalConfig(TaskConfig):
    task: str = Field(description="An lm-eval registry name (task, group or tag) or a task YAML's path "
                      "(relative to this file).")
    include_path: list[str] = Field(default_factory=list, description="Directories of extra lm-eval task "
                                    "YAMLs (lm-eval's --include_path), relative to this file.")
    num_fewshot: int | None = Field(default=None, ge=0)
    fewshot_as_multiturn: bool | None = None
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    gen_kwargs: dict[str, Any] | None = None
    metric: str | None = Field(default=None, description="Default: the task's first metric.")
    filter: str = "none"
    direction: Direction | None = Field(default=None, description="Default: lm-eval's higher_is_better.")
    add_bos_token: bool | None = Field(default=None, description="Default: lm-eval's (local-form YAMLs: true).")
    max_length: int | None = Field(default=None, ge=8)
    search_fraction: float = Field(default=0.5, gt=0, lt=1, description="A task with one evaluation split: "
                                   "the share of its documents the search scores (the rest are the test part).")
    partition_seed: int = Field(default=0, description="Seeds the search/test partition of a one-split task.")

    @field_validator("include_path", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


@register_evaluator("lm_eval")
class LmEvalTask(Evaluator):
    Config = LmEvalConfig
    config: LmEvalConfig

    # -- what is scored ------------------------------------------------------------------------
    @cached_property
    def _include(self) -> tuple[str, ...]:
        out = []
        for p in self.config.include_path:
            path = (self.root / p).resolve()
            if not path.is_dir():
                raise LmEvalTaskError(f"{self._where}: include_path {p!r}: no directory at {path}.")
            out.append(str(path))
        return tuple(out)

    @property
    def _where(self) -> str:
        return f"lm-eval task {self.config.task!r}"

    @cached_property
    def _spec(self) -> str | dict:
        task = self.config.task
        if task.endswith((".yaml", ".yml")):
            path = (self.root / task).resolve()
            if not path.is_file():
                raise TaskDataError(f"task: lm-eval YAML not found at {path}.")
            if is_local_form(path):
                return local_task_config(path, self.split)
            return str(path)
        return task

    @cached_property
    def _defaults(self) -> bool:
        """Whether lm-eval's own task index is loaded (not for a task of ``include_path``)."""
        spec = self._spec
        if isinstance(spec, dict):
            return False
        if spec == self.config.task:
            return needs_defaults(spec, self._include, where=self._where)
        return True

    @cached_property
    def _loaded(self) -> dict[str, Any]:
        loaded = load_task_objects(self._spec, self._include, where=self._where, defaults=self._defaults)
        self.split_plans = []
        if not self._local:
            for task in loaded["tasks"].values():
                self.split_plans.append(guard_task(task, self.split, seed=self.config.partition_seed,
                                                   search_fraction=self.config.search_fraction))
        return loaded

    @property
    def _local(self) -> bool:
        """evomerge's older local form (``lm_eval_local``): its own two splits, no guard."""
        return isinstance(self._spec, dict)

    @cached_property
    def _top(self) -> list:
        """What simple_evaluate is given: the group, or the task(s) (a tag: several)."""
        loaded, name = self._loaded, self._result_name
        if name in loaded["groups"]:
            return [loaded["groups"][name]]
        return list(loaded["tasks"].values())

    @cached_property
    def _result_name(self) -> str:
        """The name lm-eval reports the score under: the group, the task, or (a tag, or a
        YAML of several tasks) none, their mean being the score."""
        spec, loaded = self._spec, self._loaded
        if isinstance(spec, dict):
            return spec["task"]
        if spec in loaded["groups"] or spec in loaded["tasks"]:
            return spec
        children = {c for kids in loaded["group_map"].values() for c in kids}
        tops = [g for g in loaded["groups"] if g not in children]
        if len(tops) == 1:
            return tops[0]
        if len(loaded["tasks"]) == 1:
            return next(iter(loaded["tasks"]))
        return spec

    @property
    def result_name(self) -> str:
        """The name lm-eval reports the score under (a group, a task, or a tag's own name)."""
        return self._result_name

    def lm_eval_tasks(self) -> dict[str, Any]:
        """lm-eval's task objects this evaluator scores with, by name (a group's or tag's leaves)."""
        return dict(self._loaded["tasks"])

    @cached_property
    def _sizes(self) -> dict[str, int]:
        return {name: len(task.eval_docs) for name, task in self._loaded["tasks"].items()}

    @cached_property
    def _strata(self) -> dict[str, list | None]:
        # The local form keeps its plain nested subsets (its scores stay as they were).
        return {name: None if self._local else labels(task) for name, task in self._loaded["tasks"].items()}

    def size(self) -> int:
        return max(self._sizes.values())

    def cost(self, fidelity: int | None = None) -> float:
        return float(sum(n if fidelity is None else min(fidelity, n) for n in self._sizes.values()))

    def subset(self, name: str, fidelity: int | None) -> list[int]:
        """The documents of leaf task ``name`` scored at ``fidelity`` (indices into its scored split)."""
        return stratified_subset(self._sizes[name], fidelity, self.config.subset_seed, self._strata[name])

    # -- objectives ----------------------------------------------------------------------------
    @cached_property
    def _metric(self) -> tuple[str, Direction]:
        loaded, cfg = self._loaded, self.config
        name = self._result_name
        if name in loaded["groups"]:
            aggregate = [m["metric"] if isinstance(m, dict) else m.metric
                         for m in _aggregate_metric_list(loaded["groups"][name])]
            known = aggregate or self._leaf_metrics()
        else:
            known = self._leaf_metrics()
        metric = cfg.metric or (known[0] if known else "exact_match")
        if known and metric not in known:
            raise LmEvalTaskError(
                f"{self._where}: metric {metric!r} is not one the task reports (it reports "
                f"{', '.join(known)}); set `metric:` to one of them."
            )
        if cfg.direction is not None:
            return metric, cfg.direction
        for task in loaded["tasks"].values():
            hib = task.higher_is_better().get(metric)
            if hib is not None:
                return metric, "maximize" if hib else "minimize"
        return metric, "maximize"

    def _leaf_metrics(self) -> list[str]:
        """The metrics every leaf task reports (a tag's score is their mean)."""
        per_task = [list(task.higher_is_better()) for task in self._loaded["tasks"].values()]
        common = [m for m in per_task[0] if all(m in other for other in per_task[1:])]
        if not common:
            raise LmEvalTaskError(
                f"{self._where}: its tasks ({', '.join(self._loaded['tasks'])}) report no metric in common, "
                f"so they have no mean to score; name the tasks as separate objectives."
            )
        return common

    def objectives(self) -> list[Objective]:
        metric, direction = self._metric
        return [Objective(metric, direction)]

    def validate(self) -> None:
        self.objectives()  # loads the index, the task, its datasets and the metric: all may fail

    def needed_paths(self) -> list:
        inline = (self.ref or "").startswith("lm_eval:")
        return [*map(Path, self._include), *([] if inline else super().needed_paths())]

    def check_model(self, model_dir) -> None:
        from evomerge.io.compat import has_chat_template

        if self.config.apply_chat_template and not has_chat_template(model_dir):
            raise LmEvalTaskError(
                f"{self._where}: apply_chat_template is set, but {model_dir} has no chat template (no "
                f"chat_template.jinja, none in tokenizer_config.json), and every candidate is scored with "
                f"its tokenizer. Add the template there (e.g. the instruct model's chat_template.jinja), "
                f"or set apply_chat_template: false."
            )

    def record(self) -> dict[str, Any]:
        """What a run records of this task: its options and how its documents were divided."""
        self._loaded  # noqa: B018 - builds the split plans
        return {"task": self.config.task, "split": self.split,
                "splits": [p.to_dict() for p in self.split_plans]}

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, model, tokenizer, fidelity):
        import lm_eval

        cfg = self.config
        metric, _ = self._metric
        bos = cfg.add_bos_token if cfg.add_bos_token is not None else (True if self._local else None)
        samples = {name: self.subset(name, fidelity) for name, n in self._sizes.items()
                   if fidelity is not None and fidelity < n} or None
        options: dict[str, Any] = {"num_fewshot": cfg.num_fewshot, "apply_chat_template": cfg.apply_chat_template,
                                   "system_instruction": cfg.system_instruction, "gen_kwargs": cfg.gen_kwargs}
        if cfg.fewshot_as_multiturn is not None:
            options["fewshot_as_multiturn"] = cfg.fewshot_as_multiturn
        # lm-eval calls the model itself: check every forward's logits, as our own evaluators do,
        # so a broken merge (NaN weights, overflow) fails instead of scoring 0.
        hook = model.register_forward_hook(lambda _m, _i, out: check_finite(getattr(out, "logits", out)))
        try:
            with _quiet():
                lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size,
                                   device=str(model_device(model)), max_length=cfg.max_length,
                                   **({} if bos is None else {"add_bos_token": bos}))
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=list(self._top), task_manager=task_manager(self._include, defaults=self._defaults),
                    samples=samples, bootstrap_iters=0, log_samples=False, cache_requests=False, **options,
                )
        finally:
            hook.remove()
        # lm-eval's own report of this scoring (a group's leaves included), for results files;
        # kept on the evaluator, not in the result, so the ledger does not carry it.
        self.last_report = {k: out.get(k) for k in _REPORT_KEYS}
        value = self._read(out["results"], metric)
        n = sum(len(samples[k]) if samples and k in samples else v for k, v in self._sizes.items())
        return {metric: value}, n

    def _read(self, results: dict[str, dict], metric: str) -> float:
        key = f"{metric},{self.config.filter}"
        names = [self._result_name] if self._result_name in results else list(self._sizes)
        values = []
        for name in names:
            res = results.get(name, {})
            if key not in res or res[key] in (None, "N/A"):
                have = ", ".join(k for k in res if "," in k and "_stderr" not in k)
                raise LmEvalTaskError(f"lm-eval reported no {key!r} for {name} (it has {have or 'nothing'}).")
            values.append(float(res[key]))
        return sum(values) / len(values)


_REPORT_KEYS = ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def _aggregate_metric_list(group) -> list:
    """A group's aggregate metrics: lm-eval 0.4.13's Group holds them itself, 0.4.12's
    ConfigurableGroup in its config."""
    found = getattr(group, "aggregate_metric_list", None)
    if found is None:
        found = getattr(getattr(group, "config", None), "aggregate_metric_list", None)
    return list(found or [])


@cache
def _quiet_hflm():
    """lm-eval's ``HFLM`` without a progress bar per candidate (the search reports progress)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


@contextmanager
def _quiet():
    """Once per candidate, lm-eval warns that the model is an object and not a path, draws a
    progress bar, and stamps its results (which evomerge does not keep) with ``git describe`` (a
    "fatal: not a git repository" on stderr outside a checkout) and torch's environment report
    (a dozen subprocesses: most of a small model's scoring time). None of it is wanted here."""
    import logging
    from functools import partial

    from lm_eval import evaluator
    from lm_eval.api import task as task_module

    logger = logging.getLogger("lm_eval")
    level, git, env, bar = logger.level, evaluator.get_git_commit_hash, evaluator.add_env_info, task_module.tqdm
    logger.setLevel(logging.ERROR)
    evaluator.get_git_commit_hash = lambda: None
    evaluator.add_env_info = lambda results: None  # torch's collect_env: `pip list` and more, 0.3 s
    task_module.tqdm = partial(bar, disable=True)  # the bar over documents as prompts are built
    try:
        yield
    finally:
        logger.setLevel(level)
        evaluator.get_git_commit_hash, evaluator.add_env_info = git, env
        task_module.tqdm = bar
