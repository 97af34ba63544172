"""Multi-SLERP: spherical interpolation between any number of models (or task vectors).

The inputs (minus the base, when there is one) are flattened and put on the unit sphere; their
weighted mean direction is the point the sphere is flattened around. Each input's component
orthogonal to it (its tangent vector there) is averaged with the weights, and the exponential map
takes the average back onto the sphere. The result gets the weighted mean of the inputs' norms,
and the base back. With two inputs whose weighted mean direction vanishes (antipodal, equal
weights) it falls back to linear interpolation; with more it is an error, unless every input
equals the base (the base comes back, where mergekit raises). mergekit's ``multislerp`` (Charles
Goddard), with its arithmetic: every operation in the inputs' dtype (the weights a tensor of that
dtype, the sums over the models and over the entries torch reductions of the same shapes), so the
two agree bit for bit.
"""

from __future__ import annotations

from functools import reduce

import torch

from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


def multislerp_tensors(
    tensors: list[torch.Tensor], weights: list[float], base: torch.Tensor | None, normalize: bool, eps: float
) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    k, shape = len(tensors), tensors[0].shape
    dtype = reduce(torch.promote_types, [t.dtype for t in tensors] + ([base.dtype] if base is not None else []))
    b = base.to(dtype) if base is not None else None
    x = torch.stack([t.to(dtype) for t in tensors])
    if b is not None:
        x -= b
    w = torch.tensor(weights, dtype=dtype, device=x.device)
    if normalize:
        w = w / w.sum()
    col = w.view(-1, 1)

    # mergekit's operations, in the same order and shapes (torch's reductions sum in an order that
    # depends on the shape); in place where that gives the same bits, into one k x n scratch.
    units = x.view(k, -1)
    norms = torch.norm(units, dim=-1, keepdim=True)
    units.div_(norms + eps)  # x holds the unit vectors from here on
    scratch = units * col
    mean = scratch.sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        # Two inputs: linear interpolation, as mergekit. No task vector at all (every input
        # equals the base): the base, where mergekit raises.
        if k != 2 and norms.max() >= eps:
            raise ValueError(
                "multislerp: the inputs' weighted mean direction is zero (antipodal inputs whose "
                "weights cancel); change the weights"
            )
        del x, scratch, units
        # The task vectors again (x was overwritten), as mergekit's stack minus the base.
        deltas = [t.to(dtype) - b if b is not None else t.to(dtype) for t in tensors]
        out = deltas[0] * w[0]
        for i in range(1, k):
            out = out + deltas[i] * w[i]
        if b is not None:
            out = out + b
        return out.reshape(shape).to(tensors[0].dtype)
    mean.div_(mean_norm)

    # Tangent vectors at the mean: units - (units . mean) mean, in place of the units.
    torch.mul(units, mean, out=scratch)
    dots = scratch.sum(-1, keepdim=True)
    torch.mul(dots, mean, out=scratch)
    tangents = units.sub_(scratch)
    torch.mul(tangents, col, out=scratch)
    step = scratch.sum(0)
    del x, scratch, units, tangents

    # Exponential map back onto the sphere, scaled by the weighted mean norm.
    step_norm = torch.norm(step) + eps
    out = mean.mul_(torch.cos(step_norm))
    out.add_(step.mul_(torch.sin(step_norm) / step_norm))
    out.mul_((norms.squeeze(-1) * w).sum())
    out = out.view(shape)
    if b is not None:
        out.add_(b)
    return out.to(tensors[0].dtype)


@merge_method(
    "multislerp",
    params=(
        Param("weight", float, Scope.PER_MODEL, low=0.0, bounded_by="normalize_weights",
              why="weights are divided by their sum"),
        Param("normalize_weights", bool, default=True),
        Param("eps", float, default=1e-8, low=0.0, why="it guards divisions by a norm"),
    ),
    base=BasePolicy.OPTIONAL,
    min_inputs=1,
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
)
def multislerp(
    group: TensorGroup, weight: list[float], normalize_weights: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    return multislerp_tensors(group.tensors, weight, group.base, normalize_weights, eps)
