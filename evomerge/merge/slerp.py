"""SLERP: spherical interpolation between the base and one other model.

``t`` = 0 gives the base, 1 the other model. The angle is measured between the
whole flattened tensors; when they are nearly colinear (|cos| above 0.9995)
the formula is ill-conditioned, so the result falls back to linear
interpolation.

The arithmetic is mergekit's ``slerp``, operation for operation, so the two agree bit for bit:
computed in float32 (float64 stays float64) a chunk of ``_CHUNK`` entries at a time (the norms are
the norm of the chunks' norms, the cosine the sum of the chunks' sums of products of the
normalised entries), ``t`` and the coefficients float32 tensors, and each entry of the result
``coef_a * a + coef_b * b`` rounded once to the inputs' dtype (the wider of the two).
"""

from __future__ import annotations

import torch

from evomerge.merge._util import new_output
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8
# mergekit's _CHUNK_ELEMENTS // (tensors merged in one batch); its graph executor merges one
# tensor at a time, so a chunk is 1M entries.
_CHUNK = 1024 * 1024


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    common = torch.promote_types(v0.dtype, v1.dtype)  # mergekit aligns the two inputs' dtypes first
    dtype = torch.float64 if common == torch.float64 else torch.float32
    a = v0.reshape(1, -1)  # mergekit's [outputs, entries] layout, one output
    b = v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=dtype, device=v0.device).reshape(-1, 1)
    n = a.shape[1]
    if not n:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(common)
    chunks = [slice(s, s + _CHUNK) for s in range(0, n, _CHUNK)]
    def norm(v: torch.Tensor) -> torch.Tensor:  # the norm of the chunks' norms, 1 if ~0
        parts = torch.stack([torch.linalg.vector_norm(v[:, c].to(dtype), dim=1, keepdim=True) for c in chunks])
        whole = torch.linalg.vector_norm(parts, dim=0)
        return torch.where(whole > NORM_EPS, whole, 1)

    norm_a, norm_b = norm(a), norm(b)
    dot_parts = []
    for c in chunks:
        x = a[:, c].to(dtype) / norm_a
        y = b[:, c].to(dtype) / norm_b
        dot_parts.append(x.mul_(y).sum(dim=1, keepdim=True))
        del x, y
    dot = torch.stack(dot_parts).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)

    out = new_output(a.shape, common, v0.device)
    for c in chunks:
        x = coef_a * a[:, c].to(dtype)
        x.add_(coef_b * b[:, c].to(dtype))
        out[:, c] = x  # rounded once to the inputs' dtype
        del x
    return out.reshape(v0.shape)


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
