"""A user's Python function as a task: ``pkg.module:fn(model, tokenizer) -> {name: value}``.

The config declares the objectives and their directions, so a search knows
what to optimise before the function ever runs. A function that accepts a
``fidelity`` keyword gets the requested subset size (``None`` for all).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import numbers
import reprlib
import sys
from collections.abc import Callable
from functools import cached_property

from pydantic import Field, field_validator

from evomerge.eval.base import (
    Direction,
    EvaluationFailure,
    Evaluator,
    Objective,
    TaskConfig,
    register_evaluator,
)
from evomerge.eval.data import TaskDataError


class PythonFnConfig(TaskConfig):
    function: str = Field(description="'package.module:function'")
    objectives: dict[str, Direction] = Field(min_length=1)
    size: int | None = Field(default=None, ge=1, description="Examples behind the function, if any.")
    python_path: str | None = Field(
        default=None, description="A directory (relative to the YAML) to import the module from."
    )

    @field_validator("function")
    @classmethod
    def _spec(cls, v: str) -> str:
        mod, _, fn = v.partition(":")
        if not mod or not fn:
            raise ValueError(f"{v!r} is not 'package.module:function'")
        return v


def load_function(spec: str, search_path: str | None = None) -> Callable:
    mod_name, _, fn_name = spec.partition(":")
    added = search_path is not None and search_path not in sys.path
    if added:
        sys.path.insert(0, search_path)  # lets a task YAML sit next to its module
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise TaskDataError(
            f"function: cannot import module {mod_name!r} ({e}). Put it on PYTHONPATH or set "
            f"python_path in the task YAML to the directory that holds it."
        ) from None
    finally:
        if added:
            sys.path.remove(search_path)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise TaskDataError(f"function: {mod_name!r} has no callable {fn_name!r}.")
    return fn


@register_evaluator("python")
class PythonFunction(Evaluator):
    Config = PythonFnConfig
    config: PythonFnConfig

    @cached_property
    def function(self) -> Callable:
        extra = self.config.python_path
        return load_function(self.config.function, str((self.root / extra).resolve()) if extra else None)

    def objectives(self) -> list[Objective]:
        return [Objective(k, d) for k, d in self.config.objectives.items()]

    def size(self) -> int | None:
        return self.config.size

    def validate(self) -> None:
        self.function  # noqa: B018  (imports the module: a typo fails at load, not mid-search)

    def _score(self, model, tokenizer, fidelity):
        fn = self.function
        kwargs = {}
        if "fidelity" in inspect.signature(fn).parameters:
            kwargs["fidelity"] = fidelity
        values = fn(model, tokenizer, **kwargs)
        if not isinstance(values, dict):
            raise EvaluationFailure(
                f"{self.config.function} returned {type(values).__name__} ({reprlib.repr(values)}), "
                f"not a dict of values such as {{'{next(iter(self.config.objectives))}': 0.5}}"
            )
        values = {str(k): _number(self.config.function, str(k), v) for k, v in values.items()}
        n = self.size() or 0
        return values, (n if fidelity is None else min(n, fidelity))


def _number(function: str, key: str, value) -> float:
    """A returned value as a float: a real number, or a one-element tensor or array.

    Strictly: ``float()`` would also take the string ``"0.5"``, which is a bug in the
    function more often than a score, and its error for ``None`` names no objective.
    """
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, numbers.Real):
        with contextlib.suppress(ValueError, RuntimeError):  # more than one element
            value = item()  # a 0-d tensor or array, or one of one element
    if isinstance(value, numbers.Real):
        return float(value)
    raise EvaluationFailure(
        f"{function} returned {type(value).__name__} for {key!r} ({reprlib.repr(value)}), not a number"
    )
