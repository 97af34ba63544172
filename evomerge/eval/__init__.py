"""Evaluators: score an in-memory model on a task, at a chosen fidelity.

Importing this package registers the built-in evaluator types; lm-eval itself
is imported only when an lm-eval task is scored.
"""

from evomerge.eval import (  # noqa: F401  (registration side effects)
    cost,
    exact_match,
    lm_eval_task,
    loglikelihood,
    perplexity,
    python_fn,
)
from evomerge.eval.base import (
    EVALUATORS,
    EvalResult,
    EvaluationFailure,
    Evaluator,
    Objective,
    TaskConfig,
    register_evaluator,
)
from evomerge.eval.task import SplitLeakError, load_task, task_names

__all__ = [
    "EVALUATORS",
    "EvalResult",
    "EvaluationFailure",
    "Evaluator",
    "Objective",
    "TaskConfig",
    "SplitLeakError",
    "load_task",
    "register_evaluator",
    "task_names",
]
