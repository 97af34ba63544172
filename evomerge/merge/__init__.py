"""Merge methods (pure tensor functions, one module each) and the engines that apply recipes.

A method's module is imported when the method is first asked for by name
(``get_method``, ``METHODS.get``): ``evomerge.methods`` lists which module holds each.
"""

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
