"""SLERP: spherical interpolation between the base and one other model.

``t`` = 0 gives the base, 1 the other model. The angle is measured between the
whole flattened tensors; when they are nearly colinear (|cos| above 0.9995)
the formula is ill-conditioned, so the result falls back to linear
interpolation. Accumulates in float32 (float64 stays float64).
"""

from __future__ import annotations

import math

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    dtype = work_dtype(v0)
    a = v0.reshape(-1).to(dtype)
    b = v1.reshape(-1).to(dtype)
    norm_a = torch.linalg.vector_norm(a).item()
    norm_b = torch.linalg.vector_norm(b).item()
    norm_a = norm_a if norm_a > NORM_EPS else 1.0
    norm_b = norm_b if norm_b > NORM_EPS else 1.0
    dot = max(-1.0, min(1.0, torch.dot(a, b).item() / (norm_a * norm_b)))
    if abs(dot) > DOT_THRESHOLD:
        c0, c1 = 1.0 - t, t
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        c0 = math.sin((1.0 - t) * theta) / sin_theta
        c1 = math.sin(t * theta) / sin_theta
    out = torch.mul(a, c0)
    out.add_(b, alpha=c1)
    return out.reshape(v0.shape).to(v0.dtype)  # like every method: the inputs' dtype out


@merge_method(
    "slerp",
    params=(Param("t", float, low=0.0, high=1.0, why="it runs from the base (0) to the other model (1)"),),
    base=BasePolicy.REQUIRED,
    min_inputs=1,
    max_inputs=1,
    reference="https://en.wikipedia.org/wiki/Slerp",
)
def slerp(group: TensorGroup, t: float) -> torch.Tensor:
    return slerp_tensors(t, group.base, group.tensors[0])
