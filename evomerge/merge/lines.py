"""LiNeS: layer-increasing network scaling (Wang et al., ICLR 2025, arXiv 2410.17146).

Fine-tuning changes the shallow layers little and what it changes there is general; merging
several task vectors at one scale distorts those general features most. LiNeS scales the merged
task vector by depth instead:

    out = base + lambda(l) * sum_i weight_i * (model_i - base),
    lambda(l) = alpha + beta * l / (L - 1)

for output layer ``l`` of ``L`` (the layer it lands in after a layer-path recipe renumbers
slices; a one-layer model counts its layer as the last, as gradients do). Tensors outside the
layer stack (embeddings, final norm, head) get ``alpha``, as the official code scales every
parameter outside its residual blocks. ``alpha`` defaults to ``1 / T`` for ``T`` task vectors,
the paper's multi-task choice on top of task arithmetic (its ``alpha`` is
``||sum of task vectors||_1 / ||merged task vector||_1 / T``, which is ``1 / T`` for the plain
sum). ``weight`` (default 1) is evomerge's: the paper sums the task vectors unweighted. The
paper also applies LiNeS on top of TIES and Consensus merging; those variants need whole-model
norms for ``alpha`` and are not offered here.
"""

from __future__ import annotations

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


def layer_scale(name: str, layer: int | None, num_layers: int | None, alpha: float, beta: float) -> float:
    """LiNeS' factor for one tensor: ``alpha`` outside the layer stack, ``alpha`` at layer 0,
    ``alpha + beta`` at the last layer, linear in between."""
    if num_layers is None:
        raise ValueError(
            f"lines scales each tensor by its depth, but tensor {name} came without the model's "
            f"layer count (TensorGroup.num_layers is None). Merge through the planner "
            f"(evomerge merge / InMemoryMerger), or set TensorGroup.layer and num_layers when "
            f"calling the method directly."
        )
    if layer is None:
        return alpha
    if not 0 <= layer < max(num_layers, 1):
        raise ValueError(
            f"tensor {name} is given layer {layer} of a {num_layers}-layer model; the layer index "
            f"must lie in 0..{num_layers - 1}."
        )
    position = layer / (num_layers - 1) if num_layers > 1 else 1.0
    return alpha + beta * position


def lines_tensors(
    base: torch.Tensor, tensors: list[torch.Tensor], weight: list[float], factor: float
) -> torch.Tensor:
    if not tensors:
        return base
    dtype = work_dtype(base)
    b = base.to(dtype)
    merged = torch.zeros_like(b)
    for x, w in zip(tensors, weight, strict=True):
        merged.add_(x.to(dtype) - b, alpha=w)
    return (b + factor * merged).to(base.dtype)


@merge_method(
    "lines",
    params=(
        Param("weight", float, Scope.PER_MODEL, default=1.0, low=0.0, high=2.0,
              why="it scales a task vector inside the sum; the paper sums them with weight 1"),
        Param("alpha", float, default=None, low=0.0, high=1.0,
              why="it scales the shallowest layer's change; unset, it is 1 / (number of models)"),
        Param("beta", float, default=0.5, low=0.0, high=1.0,
              why="it is what the deepest layer adds to alpha; the paper searches it in [0, 1]"),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2410.17146",
)
def lines(group: TensorGroup, weight: list[float], alpha: float | None = None, beta: float = 0.5) -> torch.Tensor:
    if not group.tensors:
        return group.base
    a = 1.0 / len(group.tensors) if alpha is None else alpha
    factor = layer_scale(group.name, group.layer, group.num_layers, a, beta)
    return lines_tensors(group.base, group.tensors, weight, factor)
