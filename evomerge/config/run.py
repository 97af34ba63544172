"""A search run's configuration (``runs/*.yaml``), validated before any compute."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.config.tracking import TrackingConfig
from evomerge.errors import EvomergeError
from evomerge.validation import StrictModel, problems, read_yaml_file


class RunConfigError(EvomergeError):
    pass


_CONSTRAINT_TEXT = re.compile(r"^\s*(?P<metric>\S+)\s*(?P<op><=|>=)\s*(?P<bound>\S+)\s*$")


class ConstraintSpec(StrictModel):
    """A bound on one metric a candidate must meet to count: ``{metric: cost/params, max: 7e9}``.
    The string ``"cost/params <= 7e9"`` (or ``>=`` for ``min``) is the same constraint."""

    metric: str = Field(
        description="task/metric, a key of the ledger's scores: cost/params, cost/layers, cost/bytes, "
        "cost/latency_ms_per_token, or a metric of any task (evaluated even when not an objective).",
    )
    max: float | None = Field(default=None, description="Feasible when the metric is at most this.")
    min: float | None = Field(default=None, description="Feasible when the metric is at least this.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        m = _CONSTRAINT_TEXT.match(data)
        bound = None
        if m is not None:
            try:
                bound = float(m["bound"])
            except ValueError:
                bound = None
        if m is None or bound is None:
            raise ValueError(
                f"{data!r} is not a constraint; write 'METRIC <= NUMBER' or 'METRIC >= NUMBER' "
                f"(e.g. 'cost/params <= 7e9'), or a mapping {{metric: cost/params, max: 7e9}}"
            )
        return {"metric": m["metric"], "max" if m["op"] == "<=" else "min": bound}

    @field_validator("metric")
    @classmethod
    def _task_slash_metric(cls, v: str) -> str:
        task, _, name = v.strip().rpartition("/")
        if not task or not name or " " in v.strip():
            raise ValueError(
                f"{v!r} does not name a task's metric; write task/metric as the ledger's scores name "
                f"it, e.g. cost/params or addition/exact_match"
            )
        return v.strip()

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintSpec:
        if (self.max is None) == (self.min is None):
            raise ValueError(
                f"a constraint on {self.metric} has exactly one of max or min (a range is two "
                f"constraints: {{metric: {self.metric}, min: ...}} and {{metric: {self.metric}, max: ...}})"
            )
        bound = self.max if self.max is not None else self.min
        if not math.isfinite(bound):
            raise ValueError(f"the bound of the constraint on {self.metric} must be a finite number, not {bound}")
        return self

    @property
    def bound(self) -> float:
        return self.max if self.max is not None else self.min  # type: ignore[return-value]

    @property
    def kind(self) -> Literal["max", "min"]:
        return "max" if self.max is not None else "min"

    def __str__(self) -> str:
        return f"{self.metric} {'<=' if self.kind == 'max' else '>='} {self.bound:g}"


INLINE_LM_EVAL = "lm_eval:"


class ObjectiveSpec(StrictModel):
    """One objective: a task's metric. ``task: lm_eval:NAME`` names an lm-eval registry task
    inline; lm-eval's options (num_fewshot, include_path, ...) then sit beside it and are checked
    when the task loads, before any compute."""

    model_config = ConfigDict(extra="allow")
    task: str
    metric: str | None = Field(default=None, description="Defaults to the task's first objective.")
    weight: float = Field(default=1.0, gt=0, description="Its share of the scalarised fitness.")
    scale: float = Field(
        default=1.0, gt=0,
        description="The value is divided by this in the weighted sum, so objectives of different "
        "units (accuracy, layers, parameters) are summed on comparable scales.",
    )
    reference: float | None = Field(
        default=None,
        description="The hypervolume's reference value for this objective, in its own units (a "
        "value no useful recipe is worse than). Default: the worst value over the run's finished "
        "trials, so `evomerge front` and MLflow agree but runs are not comparable.",
    )

    @model_validator(mode="after")
    def _options_only_inline(self) -> ObjectiveSpec:
        extra = sorted(self.model_extra or {})
        if extra and not self.task.startswith(INLINE_LM_EVAL):
            raise ValueError(
                f"unknown field(s) {', '.join(extra)}: only an inline lm-eval objective "
                f"(task: lm_eval:NAME) takes task options; put them in the task's YAML file"
            )
        return self

    @property
    def task_options(self) -> dict[str, Any]:
        """An inline lm-eval objective's options for its task (its metric included)."""
        options = dict(self.model_extra or {})
        if self.metric is not None:
            options["metric"] = self.metric
        return options


class OptimizerSpec(StrictModel):
    name: str = "cmaes"
    options: dict[str, Any] = Field(default_factory=dict)


class Budget(StrictModel):
    trials: int = Field(default=50, ge=1, description="Candidate recipes evaluated (duplicates do not count).")
    seconds: float | None = Field(default=None, gt=0, description="No new candidates after this wall time.")
    patience: int | None = Field(
        default=None, ge=1, description="Stop after this many candidates without a better best."
    )


class MultiFidelity(StrictModel):
    """Successive halving: score a bracket of candidates cheaply, promote the best 1/eta."""

    levels: list[int | None] = Field(min_length=2, description="Examples per task, increasing; null = all.")
    eta: int = Field(default=3, ge=2)
    bracket: int = Field(default=9, ge=2, description="Candidates per bracket (CMA-ES: at most its popsize).")
    schedule: Literal["successive_halving", "hyperband"] = Field(
        default="successive_halving",
        description="hyperband: cycle through brackets that start at every level (sizes from eta; "
        "`bracket` is then unused), hedging against cheap levels that rank badly.",
    )
    subsets: Literal["random", "anchors"] = Field(
        default="random",
        description="What a level below the top scores: `random` nested subsets of each task's "
        "examples, or `anchors`: the examples that best stand for the top level's, chosen from the "
        "per-example outcomes of the first `calibration` trials (scored at the top level), each "
        "weighted by the share it represents (evomerge.eval.anchors; docs/anchors.md).",
    )
    calibration: int = Field(
        default=8, ge=2, description="With subsets: anchors, how many trials are scored at the top "
        "level first to choose the anchors from.",
    )

    @model_validator(mode="after")
    def _increasing(self) -> MultiFidelity:
        lv = self.levels
        if None in lv[:-1]:
            raise ValueError("only the last level may be null (all examples)")
        ints = [v for v in lv if v is not None]
        if any(v < 1 for v in ints) or ints != sorted(set(ints)):
            raise ValueError(f"levels {lv} must be positive and strictly increasing")
        return self


class ExecutorSpec(StrictModel):
    """Where candidates are merged and scored. ``kind`` names an executor
    (``evomerge.search.executors``); options of that kind sit beside the common ones and are
    checked by the executor itself before any model loads."""

    model_config = ConfigDict(extra="allow")
    kind: str | None = Field(
        default=None,
        description="serial (in this process), pool (worker processes on this machine), or a "
        "registered executor. Default: serial for 1 worker, pool for more (as before `kind`).",
    )
    workers: int | Literal["auto"] = Field(
        default=1, description="Slots: evaluations at the same time. auto: as many as fit (Ray: the "
        "cluster's resources; pool: this machine's cores).",
    )
    torch_threads: int | None = Field(default=None, ge=1, description="Threads per worker (default: torch's).")
    max_retries: int = Field(
        default=1, ge=0, description="Times an evaluation whose worker died is run again before it "
        "is recorded as failed (pool, ray).",
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds one evaluation may run; past it, its worker is "
        "replaced and the evaluation fails (pool, ray).",
    )

    @model_validator(mode="after")
    def _positive_workers(self) -> ExecutorSpec:
        if self.workers != "auto" and self.workers < 1:
            raise ValueError("workers must be at least 1, or auto")
        return self

    @property
    def resolved_kind(self) -> str:
        if self.kind is not None:
            return self.kind
        return "serial" if self.workers == 1 else "pool"

    @property
    def options(self) -> dict[str, Any]:
        """The kind's own options (every key that is not a common one)."""
        return dict(self.model_extra or {})


class LedgerSpec(StrictModel):
    """Where a run's evaluations are recorded. ``kind`` names a ledger
    (``evomerge.search.ledgers``); a plain string is the kind alone."""

    model_config = ConfigDict(extra="allow")
    kind: str = Field(
        default="sqlite",
        description="sqlite: RUN_DIR/ledger.db; journal: RUN_DIR/ledger.jsonl, an fsynced append-only "
        "file, safer for run directories on network file systems (cluster storage).",
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_kind(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(StrictModel):
    space: str
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    constraints: list[ConstraintSpec] = Field(
        default_factory=list,
        description="Bounds a candidate must meet, judged at the top fidelity: 'cost/params <= 7e9', "
        "{metric: addition/exact_match, min: 0.5}. best, the front and export show feasible trials only.",
    )
    scalarization: Literal["auto", "weighted_sum", "pareto"] = Field(
        default="auto",
        description="What the optimiser is told: one weighted sum, or every objective (a true Pareto "
        "search, for multi-objective optimisers). auto: pareto when the optimiser supports it.",
    )
    optimizer: OptimizerSpec = OptimizerSpec()
    budget: Budget = Budget()
    fidelity: int | None = Field(default=None, ge=1, description="Examples per task (null: all).")
    multi_fidelity: MultiFidelity | None = None
    warm_start: list[dict[str, float | str]] = Field(
        default_factory=list,
        description="Points evaluated first, by gene name (see `evomerge space show`); "
        "genes left out take the middle of their range.",
    )
    priors: Literal["auto", "sources", "none"] | None = Field(
        default="auto",
        description="sources: score the equal-weight average, task arithmetic at weights 1 and each "
        "expert alone first (before warm_start's points), seeding the optimiser's model or mean. "
        "auto (the default): sources when multi_fidelity.subsets is anchors (the anchors are then "
        "chosen from outcomes that include each expert's own skill) and the space and optimiser "
        "take them, else none. none (or null): no priors.",
    )
    split: Literal["search", "test"] = "search"
    allow_test_split: bool = False
    trust_remote_code: bool = Field(
        False, description="Let the base model's own Python code load (config.json `auto_map`); "
        "off by default: a search never runs a model's code unless the run config says so.")
    executor: ExecutorSpec = ExecutorSpec()
    ledger: LedgerSpec = LedgerSpec()
    tracking: TrackingConfig = TrackingConfig()
    device: str = Field(
        default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$",
        description="Where workers merge and evaluate: cpu or cuda (under Ray, the GPU Ray assigned; "
        "else cuda:N).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description="The dtype of the sources held by each worker and of its resident model "
        "(bfloat16 halves a 7B search's memory). Default: sources as stored, resident model float32.",
    )
    sources_on: Literal["auto", "device", "host"] = Field(
        default="auto",
        description="With a cuda device: hold the source weights on the GPU (device), memory-mapped "
        "on the host and copied to the GPU a tensor at a time as each candidate is merged (host), or "
        "on the GPU when they fit beside the candidate and a fifth of its memory (auto). See docs/scale.md.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _one_bound_per_metric_and_kind(self) -> RunConfig:
        seen: dict[tuple[str, str], list[float]] = {}
        for c in self.constraints:
            seen.setdefault((c.metric, c.kind), []).append(c.bound)
        for (metric, kind), bounds in seen.items():
            if len(bounds) > 1:
                raise ValueError(
                    f"constraints: {metric} has {len(bounds)} {kind} bounds "
                    f"({', '.join(f'{b:g}' for b in bounds)}); keep the tighter one"
                )
        return self

    @model_validator(mode="after")
    def _one_fidelity_setting(self) -> RunConfig:
        if self.multi_fidelity is not None and self.fidelity is not None:
            raise ValueError("set either fidelity (one level) or multi_fidelity (levels), not both")
        return self

    def levels(self) -> tuple[int | None, ...]:
        """The fidelity levels trials are scored at, cheapest first; the last is the top."""
        return tuple(self.multi_fidelity.levels) if self.multi_fidelity else (self.fidelity,)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        raw = read_yaml_file(path, what="run config", examples="runs/quickstart.yaml is a working example",
                             error=RunConfigError)
        if not isinstance(raw, dict):
            raise RunConfigError(
                f"{path}: a run config is a mapping of fields (space, objectives, ...), not "
                f"{type(raw).__name__}; runs/quickstart.yaml is a working example."
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise RunConfigError(f"{path}: invalid run config: {problems(e, model=cls)}.") from None
