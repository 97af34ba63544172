"""Passthrough: copy one input, optionally scaled (frankenmerges, layer stacking)."""

from __future__ import annotations

import torch

from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


@merge_method(
    "passthrough",
    params=(Param("scale", float, Scope.PER_MODEL, default=None),),
    base=BasePolicy.INPUT,
    max_inputs=1,
    reads_half_as_float32=True,  # a copy, or one product computed in float32 and rounded
)
def passthrough(group: TensorGroup, scale: list[float | None]) -> torch.Tensor:
    tensor = group.tensors[0]
    return tensor if scale[0] is None else tensor * scale[0]
