"""Merge methods (pure tensor functions, one module each) and the engines that apply recipes.

Importing this package registers the built-in methods.
"""

from evomerge.merge import (  # noqa: F401  (each module registers its methods)
    linear,
    model_stock,
    nuslerp,
    passthrough,
    slerp,
    task_arithmetic,
)
from evomerge.merge.registry import (
    METHODS,
    BasePolicy,
    MethodSpec,
    Param,
    Scope,
    TensorGroup,
    get_method,
    merge_method,
)

__all__ = [
    "METHODS",
    "BasePolicy",
    "MethodSpec",
    "Param",
    "Scope",
    "TensorGroup",
    "get_method",
    "merge_method",
]
