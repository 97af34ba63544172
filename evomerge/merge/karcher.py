"""Karcher mean: the average of the models' tensors taken on the sphere, then rescaled.

Each input tensor is a direction (its unit vector) and a length (its norm). The direction of the
result is the Karcher (Frechet) mean of the directions, the point minimising the summed squared
geodesic distances, found by Riemannian gradient steps: start at the normalised Euclidean mean,
map every direction into the tangent space there (log map), step along their average (exp map),
until the step is shorter than ``tol`` or ``max_iter`` steps. Its length is the mean of the
norms. Inputs with a norm at or below ``tol`` take part in the length only. All inputs weigh the
same; a base model, if listed, is one more input. mergekit's ``karcher``, with its arithmetic:
the norms in float32 (float64 stays float64), everything else in the inputs' dtype, one input
after another in the same order, so the two agree bit for bit.
"""

from __future__ import annotations

from functools import reduce

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def karcher_tensors(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    # mergekit's karcher_merge_tensors with equal weights, operation for operation (the operand
    # order too: a float32 0-d tensor times a half tensor is not rounded like the reverse), in
    # place where that gives the same bits. Norms are float32 0-d tensors; a unit vector, the
    # mean and the tangent have the inputs' dtype, every operation on them rounded there.
    common = reduce(torch.promote_types, [t.dtype for t in tensors])
    tensors = [t.to(common) for t in tensors]  # as mergekit aligns a group's inputs (no copy when equal)
    dtype = work_dtype(tensors[0])
    alpha = 1.0 / len(tensors)
    norms = [torch.linalg.vector_norm(t.to(dtype)) for t in tensors]
    live = [i for i, n in enumerate(norms) if n.item() > tol]
    if not live:
        return torch.zeros_like(tensors[0])
    share = alpha / sum([alpha] * len(live))
    units = [(tensors[i] / norms[i]).to(tensors[i].dtype) for i in live]

    mean = torch.zeros_like(units[0])
    tmp = torch.empty_like(mean)
    for unit in units:
        mean.add_(torch.mul(unit, share, out=tmp))
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = units[0].clone() if mean_norm.item() < tol else mean.div_(mean_norm)

    tangent = torch.empty_like(mean)
    for _ in range(max_iter):
        tangent.zero_()
        for unit in units:
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue  # a direction already at the mean adds no tangent
            # tangent += share * (theta / sin(theta)) * (unit - dot * mean)
            torch.mul(dot, mean, out=tmp)
            torch.sub(unit, tmp, out=tmp)
            torch.mul(share * (theta / torch.sin(theta)), tmp, out=tmp)
            tangent.add_(tmp)
        step = torch.linalg.vector_norm(tangent.to(dtype))
        if step.item() < tol:
            break
        # mean = cos(step) * mean + sin(step) * (tangent / step), renormalised
        torch.mul(torch.cos(step), mean, out=mean)
        tangent.div_(step)
        torch.mul(torch.sin(step), tangent, out=tangent)
        mean.add_(tangent)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean.div_(unit_norm)
    del tangent, tmp, units
    # Length: the mean of all the norms (a Python sum of float32 0-d tensors, as mergekit's).
    scale = sum(alpha * n for n in norms)
    return torch.mul(scale, mean, out=mean)


@merge_method(
    "karcher",
    params=(
        Param("max_iter", int, default=10, low=1, why="at least one step is taken"),
        Param("tol", float, default=1e-5, low=0.0, why="it bounds a norm"),
    ),
    base=BasePolicy.INPUT,
    min_inputs=1,
    reference="https://en.wikipedia.org/wiki/Fr%C3%A9chet_mean",
)
def karcher(group: TensorGroup, max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    return karcher_tensors(group.tensors, int(max_iter), tol)
