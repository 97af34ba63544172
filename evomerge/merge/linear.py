"""Linear: a weighted average of the inputs (model soups, arXiv:2203.05482)."""

from __future__ import annotations

import torch

from evomerge.merge._util import weighted_sum, work_dtype
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


@merge_method(
    "linear",
    params=(
        Param("weight", float, Scope.PER_MODEL, low=0.0, bounded_by="normalize",
              why="it divides by the sum of the weights"),
        Param("normalize", bool, default=True),
    ),
    base=BasePolicy.INPUT,
    reference="https://arxiv.org/abs/2203.05482",
    reads_half_as_float32=True,  # it accumulates half inputs in float32 either way, as mergekit's
)
def linear(group: TensorGroup, weight: list[float], normalize: bool = True) -> torch.Tensor:
    first = group.tensors[0]
    dtype = work_dtype(first)
    # Divided by the sum of weights when normalising (the weights rounded to the working dtype and
    # summed there, as mergekit sums them); an exact zero sum is the user's choice.
    divisor = torch.tensor(weight, dtype=dtype).sum().item() if normalize else None
    return weighted_sum(group.tensors, weight, dtype, divisor=divisor, out_dtype=first.dtype)
