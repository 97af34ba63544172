"""Karcher mean: the average of the models' tensors taken on the sphere, then rescaled.

Each input tensor is a direction (its unit vector) and a length (its norm). The direction of the
result is the Karcher (Frechet) mean of the directions, the point minimising the summed squared
geodesic distances, found by Riemannian gradient steps: start at the normalised Euclidean mean,
map every direction into the tangent space there (log map), step along their average (exp map),
until the step is shorter than ``tol`` or ``max_iter`` steps. Its length is the mean of the
norms. Inputs with a norm at or below ``tol`` take part in the length only. All inputs weigh the
same; a base model, if listed, is one more input. mergekit's ``karcher``.
"""

from __future__ import annotations

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def karcher_tensors(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0]
    dtype = work_dtype(tensors[0])
    shape, out_dtype = tensors[0].shape, tensors[0].dtype
    flat = [t.to(dtype).reshape(-1) for t in tensors]
    norms = torch.stack([torch.linalg.vector_norm(v) for v in flat])
    length = norms.mean()
    live = [i for i in range(len(flat)) if norms[i].item() > tol]
    if not live:
        return torch.zeros(shape, dtype=out_dtype, device=tensors[0].device)
    units = torch.stack([flat[i] / norms[i] for i in live])
    share = 1.0 / len(live)

    mean = units.sum(0) * share
    n = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if n.item() < tol else mean / n
    for _ in range(max_iter):
        cos = (units @ mean).clamp(-1.0, 1.0)
        angle = torch.arccos(cos)
        moving = angle >= tol  # directions already at the mean add no tangent
        factor = torch.where(moving, angle / torch.sin(torch.where(moving, angle, torch.ones_like(angle))),
                             torch.zeros_like(angle))
        # sum_i w_i (u_i - cos_i m), without the k x n temporary of u_i - cos_i m
        w = share * factor
        tangent = (w @ units).sub_(mean, alpha=float(w @ cos))
        step = torch.linalg.vector_norm(tangent)
        if step.item() < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        n = torch.linalg.vector_norm(mean)
        if n.item() > tol:
            mean = mean / n
    return (length * mean).reshape(shape).to(out_dtype)


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
