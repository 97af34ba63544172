"""How a merge method declares itself, and the registry of methods by name.

A method is a pure function on tensors. Its ``MethodSpec`` says which
parameters it takes (shared by all inputs, or one value per input model), how
it treats the base model, how many inputs it accepts, and whether it draws
random numbers. The planner resolves parameters per tensor from a recipe and
calls the function; nothing here does I/O or knows about devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from evomerge.methods import METHODS


class BasePolicy(str, Enum):
    REQUIRED = "required"  # deltas are taken against the base (task arithmetic family)
    OPTIONAL = "optional"  # a base changes the method's meaning when given (nuslerp)
    INPUT = "input"  # the base, if listed, is just another input (linear, passthrough)


class Scope(str, Enum):
    SHARED = "shared"  # one value for the tensor
    PER_MODEL = "per_model"  # one value per input (non-base inputs unless the policy is INPUT)


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A method parameter. ``low``/``high``: the values it may take (inclusive; None: unbounded),
    checked when a recipe is planned, before any compute. ``bounded_by``: the bounds hold only
    while this boolean parameter is true (weights must be >= 0 only where a method divides by
    their sum, i.e. while ``normalize`` is on). ``why``: what the bounds protect, for the message.
    ``inert``: accepted for mergekit's configs but without effect here (not searched)."""

    name: str
    type: type
    scope: Scope = Scope.SHARED
    default: Any = _REQUIRED
    low: float | None = None
    high: float | None = None
    bounded_by: str | None = None
    why: str = ""
    # Accepted (mergekit takes it) but without effect in this method: never a search gene.
    inert: bool = False

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"[{self.low:g}, {self.high:g}]"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}"

    def out_of_range(self, value: Any) -> bool:
        """Whether a number lies outside the parameter's bounds (non-numbers are ``coerce``'s)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            return True
        return (self.low is not None and v < self.low) or (self.high is not None and v > self.high)

    def coerce(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false"}:
                return value.lower() == "true"
            raise ValueError(f"parameter {self.name!r} must be true or false, got {value!r}")
        if self.type is float:
            if isinstance(value, bool):
                raise ValueError(f"parameter {self.name!r} must be a number, got {value!r}")
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"parameter {self.name!r} must be a number, got {value!r}"
                ) from None
        if self.type is int:
            # A gradient over whole numbers interpolates to fractions: refuse them, never round.
            try:
                number = None if isinstance(value, bool) else float(value)
            except (TypeError, ValueError):
                number = None
            if number is None or not number.is_integer():
                raise ValueError(f"parameter {self.name!r} must be a whole number, got {value!r}")
            return int(number)
        return value


@dataclass
class TensorGroup:
    """What a method merges: the same tensor from each input model.

    ``tensors`` are the inputs that per-model parameters refer to (the non-base
    inputs, unless the method's base policy is INPUT). ``base`` is the base
    model's tensor, if the method uses one. ``layer`` is the index of the output
    layer the tensor belongs to (None for embeddings, the final norm and the head)
    and ``num_layers`` the output model's depth, for methods that scale by depth;
    the planner fills both (None: the caller did not say).
    """

    name: str
    tensors: list[torch.Tensor]
    base: torch.Tensor | None = None
    seed: int | None = None  # randomised methods derive their streams from it
    layer: int | None = None
    num_layers: int | None = None


MergeFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: MergeFn
    params: tuple[Param, ...] = ()
    base: BasePolicy = BasePolicy.INPUT
    min_inputs: int = 1  # counted over TensorGroup.tensors
    max_inputs: int | None = None
    randomized: bool = False
    reference: str = ""
    # Checks that involve several parameters of one input (DELLA's density and epsilon):
    # given that input's resolved values by name, a message saying what is wrong, or None.
    check: Callable[[dict[str, Any]], str | None] | None = None
    # Whether the method computes in float32 from half CPU tensors itself, without a float32
    # copy of them (``_pieces.computing_in_float32``): a plan computing in float32 hands it its
    # bf16 / fp16 sources unconverted.
    reads_half_as_float32: bool = False
    _by_name: dict[str, Param] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.params})

    def param(self, name: str) -> Param | None:
        return self._by_name.get(name)

    @property
    def shared_params(self) -> list[Param]:
        return [p for p in self.params if p.scope is Scope.SHARED]

    @property
    def per_model_params(self) -> list[Param]:
        return [p for p in self.params if p.scope is Scope.PER_MODEL]


# METHODS (evomerge.methods) is the catalogue by name; a method's module fills in its spec.


def merge_method(
    name: str,
    *,
    params: tuple[Param, ...] = (),
    base: BasePolicy = BasePolicy.INPUT,
    min_inputs: int = 1,
    max_inputs: int | None = None,
    randomized: bool = False,
    reference: str = "",
    check: Callable[[dict[str, Any]], str | None] | None = None,
    reads_half_as_float32: bool = False,
) -> Callable[[MergeFn], MergeFn]:
    """Register ``fn(group: TensorGroup, **params) -> Tensor`` as merge method ``name``."""

    def wrap(fn: MergeFn) -> MergeFn:
        METHODS.register(
            name,
            MethodSpec(name, fn, params, base, min_inputs, max_inputs, randomized, reference, check,
                       reads_half_as_float32),
        )
        return fn

    return wrap


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)
