"""Multi-SLERP: spherical interpolation between any number of models (or task vectors).

The inputs (minus the base, when there is one) are flattened and put on the unit sphere; their
weighted mean direction is the point the sphere is flattened around. Each input's component
orthogonal to it (its tangent vector there) is averaged with the weights, and the exponential map
takes the average back onto the sphere. The result gets the weighted mean of the inputs' norms,
and the base back. With two inputs whose weighted mean direction vanishes (antipodal, equal
weights) it falls back to linear interpolation; with more it is an error, unless every input
equals the base (the base comes back). mergekit's ``multislerp`` (Charles Goddard).
"""

from __future__ import annotations

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


def multislerp_tensors(
    tensors: list[torch.Tensor], weights: list[float], base: torch.Tensor | None, normalize: bool, eps: float
) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    dtype = work_dtype(tensors[0])
    x = torch.stack([t.to(dtype).reshape(-1) for t in tensors])
    if base is not None:
        x -= base.to(dtype).reshape(1, -1)
    w = torch.tensor(weights, dtype=dtype, device=x.device)
    if normalize:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    units = x / (norms + eps)
    centre = w @ units
    centre_norm = torch.linalg.vector_norm(centre)
    if centre_norm < eps:
        # Two inputs: linear interpolation, as mergekit. No task vector at all (every input
        # equals the base): the base, where mergekit raises.
        if len(tensors) != 2 and norms.max() >= eps:
            raise ValueError(
                "multislerp: the inputs' weighted mean direction is zero (antipodal inputs whose "
                "weights cancel); change the weights"
            )
        out = w @ x
    else:
        centre = centre / centre_norm
        tangents = units - (units @ centre).unsqueeze(1) * centre
        step = w @ tangents
        length = torch.linalg.vector_norm(step) + eps
        out = (centre * torch.cos(length) + step * (torch.sin(length) / length)) * (w @ norms.squeeze(1))
    if base is not None:
        out = out + base.to(dtype).reshape(-1)
    return out.reshape(tensors[0].shape).to(tensors[0].dtype)


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
