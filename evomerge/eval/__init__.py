"""Evaluators: score an in-memory model on a task, at a chosen fidelity.

Evaluator types are entries of ``EVALUATORS``: each type's module is imported
when a task of that type is first loaded (so torch loads with the first
evaluator that needs it, and lm-eval only when an lm-eval task is scored).
Plugins add types through the ``evomerge.evaluators`` entry-point group.
"""

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
