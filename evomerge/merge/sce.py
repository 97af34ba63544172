"""SCE: select, calculate, erase (FuseChat 2.0, arXiv 2408.07990).

On the task vectors (each expert minus the base) of one tensor:
  select     keep the ``select_topk`` fraction of entries where the experts disagree most (the
             largest variance across experts; the fraction is of the entries whose variance is
             not zero), the same entries for every expert;
  calculate  weigh each expert by its mean squared task vector (normalised to sum 1; equal weights
             when all are zero);
  erase      drop, per entry, the experts whose sign differs from the sign of the summed task
             vectors (zero entries count as disagreeing), as TIES elects signs.
The result is the base plus the weighted mean of what survives. mergekit's ``sce``; its
``int8_mask`` only saves memory there and is accepted and ignored here.
"""

from __future__ import annotations

import torch

from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def _most_varied(tvs: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 where an entry is among the ``fraction`` with the largest variance across experts."""
    var = tvs.var(dim=0, unbiased=False)
    k = int(torch.count_nonzero(var).item() * fraction) if fraction > 0 else 0
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[var.reshape(-1).topk(k).indices] = 1
    return mask


def sce_tensors(base: torch.Tensor, tensors: list[torch.Tensor], select_topk: float) -> torch.Tensor:
    if not tensors:
        return base
    dtype = base.dtype  # mergekit's arithmetic: in the inputs' dtype, bf16 / fp16 included
    b = base.to(dtype)
    tvs = torch.stack([t.to(dtype) - b for t in tensors])
    if select_topk < 1:
        tvs = tvs * _most_varied(tvs, select_topk)
    energy = tvs.square().flatten(1).mean(dim=1)
    total = energy.sum().item()
    share = torch.full_like(energy, 1 / len(tensors)) if abs(total) < 1e-6 else energy / total
    elected = torch.where(tvs.sum(dim=0) >= 0, 1.0, -1.0).to(dtype)
    kept = (tvs.sign() == elected).to(dtype) * share.view(-1, *([1] * (tvs.dim() - 1)))
    merged = (tvs * kept).sum(dim=0) / kept.sum(dim=0).clamp(min=1e-6)
    return (b + merged).to(base.dtype)


@merge_method(
    "sce",
    params=(
        Param("select_topk", float, default=1.0, low=0.0, high=1.0,
              why="it is the fraction of entries kept"),
        Param("int8_mask", bool, default=False, inert=True),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2408.07990",
)
def sce(group: TensorGroup, select_topk: float = 1.0, int8_mask: bool = False) -> torch.Tensor:
    return sce_tensors(group.base, group.tensors, select_topk)
