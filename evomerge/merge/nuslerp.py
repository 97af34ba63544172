"""NuSLERP: SLERP between two models (or their task vectors) with weights.

With a base model the two task vectors are interpolated and added back to the
base. ``nuslerp_flatten`` (default) treats the tensor as one vector;
otherwise rows (``nuslerp_row_wise``: columns' transposes) are interpolated
independently.
"""

from __future__ import annotations

import torch

from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method

_EPS = 1e-8
_NORM_EPS = 1e-7


def nuslerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool
) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    n0 = torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=_NORM_EPS)
    n1 = torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=_NORM_EPS)
    cos = ((v0 / n0) * (v1 / n1)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= _EPS**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin = torch.sin(theta)
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    out = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@merge_method(
    "nuslerp",
    params=(
        Param("weight", float, Scope.PER_MODEL, low=0.0,
              why="the interpolation point is one weight over their sum"),
        Param("nuslerp_flatten", bool, default=True),
        Param("nuslerp_row_wise", bool, default=False),
    ),
    base=BasePolicy.OPTIONAL,
    min_inputs=2,
    max_inputs=2,
)
def nuslerp(
    group: TensorGroup,
    weight: list[float],
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
) -> torch.Tensor:
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    a, b = group.tensors
    if group.base is None:
        return nuslerp_tensors(t, a, b, nuslerp_row_wise, nuslerp_flatten)
    base = group.base
    return base + nuslerp_tensors(t, a - base, b - base, nuslerp_row_wise, nuslerp_flatten)
