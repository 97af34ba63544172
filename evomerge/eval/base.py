"""The evaluator protocol: what a task yields, which way is better, what a fidelity costs.

An evaluator scores a model object that is already in memory (a search merges
into one resident model and never writes it to disk). ``evaluate`` never raises
for a failing task: a crash or a non-finite value comes back as a failed
``EvalResult`` carrying the reason, so one bad candidate cannot stop a search.
"""

from __future__ import annotations

import math
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from evomerge.registry import Registry
from evomerge.validation import StrictModel

Direction = Literal["maximize", "minimize"]


class EvaluationFailure(Exception):
    """Raised inside an evaluator for a known failure mode (e.g. NaN logits)."""


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Direction

    @property
    def sign(self) -> float:
        """+1 when larger is better: multiply to get a value to maximise."""
        return 1.0 if self.direction == "maximize" else -1.0


@dataclass
class EvalResult:
    task: str
    values: dict[str, float]
    ok: bool = True
    error: str | None = None
    fidelity: int | None = None
    n_examples: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TaskConfig(StrictModel):
    """Fields every task YAML has; each evaluator type adds its own."""

    type: str
    name: str | None = None
    description: str = ""
    fidelities: list[int] = Field(default_factory=list)
    subset_seed: int = 0
    batch_size: int = Field(default=64, ge=1)


class Evaluator(ABC):
    """One task. Subclasses set ``Config`` and implement ``objectives`` and ``_score``."""

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    #: whether ``_score`` reports each example's outcome (``per_example_details``) and scores the
    #: examples ``examples(fidelity)`` names: only such tasks take anchor subsets as a fidelity
    per_example: ClassVar[bool] = False
    ref: str | None = None  # what ``load_task`` loads it by again (set by it): a name or a path

    def __init__(self, config: TaskConfig, *, name: str, split: str, root: Path) -> None:
        self.config = config
        self.name = name
        self.split = split
        self.root = root  # the directory relative paths in the config are resolved against

    @abstractmethod
    def objectives(self) -> list[Objective]: ...

    def size(self) -> int | None:
        """Number of examples in the split (``None``: not example-based)."""
        return None

    def validate(self) -> None:
        """Load what the task reads (data files, functions) now, so a bad path or a
        malformed row fails before a search spends compute. Raises ``EvomergeError``."""
        self.size()

    def needed_paths(self) -> list[Path]:
        """Directories and files a worker on another machine must see to load this task."""
        return [Path(self.root).resolve()]

    def check_model(self, model_dir: Path) -> None:
        """Refuse, before any compute, a model directory whose models this task cannot score
        (the base of a search: candidates keep its tokenizer). Raises ``EvomergeError``."""
        return None  # most tasks score any causal LM

    def fidelity_levels(self) -> list[int | None]:
        """Nested subset sizes, cheapest first; ``None`` means every example."""
        n = self.size()
        if n is None:
            return [None]
        return [k for k in sorted(set(self.config.fidelities)) if k < n] + [None]

    def cost(self, fidelity: int | None = None) -> float:
        """Relative cost of one evaluation at ``fidelity`` (examples scored)."""
        n = self.size()
        if n is None:
            return 1.0
        return float(n if fidelity is None else min(fidelity, n))

    def examples(self, fidelity) -> list[int]:
        """Indices of the split's examples scored at ``fidelity``: a nested random subset of that
        many, or the examples of a ``WeightedSubset`` (anchors, ``evomerge.eval.anchors``)."""
        # imported here: listing the evaluators loads only base and task (tests/eval/test_task.py)
        from evomerge.eval.anchors import WeightedSubset
        from evomerge.eval.data import nested_subset

        if isinstance(fidelity, WeightedSubset):
            return [int(i) for i in fidelity.indices]
        return nested_subset(self.size(), fidelity, self.config.subset_seed)

    @abstractmethod
    def _score(
        self, model, tokenizer, fidelity: int | None
    ) -> tuple[dict[str, float], int] | tuple[dict[str, float], int, dict[str, Any]]:
        """Values keyed by objective name, the number of examples scored and, optionally, the
        result's ``details`` (e.g. ``per_example_details``)."""

    def evaluate(self, model, tokenizer, fidelity=None) -> EvalResult:
        """Score ``model`` at ``fidelity``: a number of examples (``None``: all) or, for a task
        with ``per_example``, a ``WeightedSubset`` whose weighted outcomes estimate the values."""
        from evomerge.eval.anchors import WeightedSubset

        t0 = time.perf_counter()
        subset = fidelity if isinstance(fidelity, WeightedSubset) else None
        if subset is not None:
            fidelity = len(subset.indices)
        try:
            values, n, *extra = self._score(model, tokenizer, subset if subset is not None else fidelity)
            if subset is not None:
                values = _estimated(values, extra[0] if extra else {}, subset, self.name)
            bad = [f"{k} ({v})" for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise EvaluationFailure(f"non-finite value for {', '.join(bad)}")
            missing = [o.name for o in self.objectives() if o.name not in values]
            if missing:
                raise EvaluationFailure(f"no value for objective(s) {', '.join(missing)}")
        except (KeyboardInterrupt, SystemExit):
            raise
        except EvaluationFailure as e:
            return self._failed(str(e), fidelity, t0)
        except Exception as e:  # a failing task is a result, not a crash of the search
            where = traceback.extract_tb(e.__traceback__)[-1]
            reason = f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
            return self._failed(reason, fidelity, t0)
        return EvalResult(
            task=self.name,
            values={k: float(v) for k, v in values.items()},
            fidelity=fidelity,
            n_examples=n,
            seconds=time.perf_counter() - t0,
            details=dict(extra[0]) if extra else {},
        )

    def _failed(self, reason: str, fidelity: int | None, t0: float) -> EvalResult:
        return EvalResult(
            task=self.name,
            values={},
            ok=False,
            error=reason,
            fidelity=fidelity,
            seconds=time.perf_counter() - t0,
        )


EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator type",
    {
        "exact_match": "evomerge.eval.exact_match",
        "loglikelihood": "evomerge.eval.loglikelihood",
        "perplexity": "evomerge.eval.perplexity",
        "python": "evomerge.eval.python_fn",
        "lm_eval": "evomerge.eval.lm_eval_task",
        "cost": "evomerge.eval.cost",
    },
    entry_points="evomerge.evaluators",
)


def register_evaluator(name: str):
    """Class decorator: ``@register_evaluator("exact_match")`` (in a module that ``EVALUATORS``
    names lazily, that a plugin's ``evomerge.evaluators`` entry point names, or that is imported
    anyway)."""
    return EVALUATORS.decorator(name)


def _estimated(values: dict[str, float], details: dict[str, Any], subset, task: str) -> dict[str, float]:
    """``values`` with each per-example objective replaced by ``subset``'s weighted estimate."""
    scored = details.get("per_example")
    if scored is None:
        raise EvaluationFailure(f"task {task} reported no per-example outcomes, so anchors cannot "
                                f"estimate its score")
    position = {int(i): k for k, i in enumerate(scored["indices"])}
    order = [position[int(i)] for i in subset.indices]
    out = dict(values)
    for name, outcomes in scored["outcomes"].items():
        out[name] = float(subset.estimate([outcomes[k] for k in order]))
    return out


def per_example_details(indices: list[int], outcomes: dict[str, list[float]]) -> dict[str, Any]:
    """``EvalResult.details`` entry of an example-based task: the scored examples' indices into
    the split and, per objective, each one's outcome (1.0/0.0 for right/wrong), in that order.
    The objective's value is their mean; ``evomerge.eval.anchors`` reads them to choose
    representative subsets."""
    for name, vals in outcomes.items():
        if len(vals) != len(indices):
            raise ValueError(f"{len(vals)} outcomes of {name!r} for {len(indices)} examples.")
    return {"per_example": {"indices": [int(i) for i in indices],
                            "outcomes": {k: [float(v) for v in vals] for k, vals in outcomes.items()}}}


def check_finite(logits) -> None:
    """NaN or inf logits mean a broken merge: a failed result, not a score."""
    import torch

    if logits.numel() == 0:
        return
    lo, hi = torch.aminmax(logits)  # NaN propagates through both; no mask the size of the logits
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise EvaluationFailure("the model produced non-finite logits")


def model_device(model):
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")
