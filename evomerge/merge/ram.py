"""RAM and RAM+ (Reinforced Agent Merging, arXiv 2601.13572): average only where experts overlap.

For one tensor, an expert *contributes* an entry where its task vector (expert minus base) is
larger than ``epsilon`` in magnitude. An entry that one expert alone contributes keeps that
expert's change in full; an entry several contribute gets the mean of their changes; the rest
stay at the base. Plain averaging would dilute every change that only one expert made.

``ramplus_tl`` (RAM+, tensor-local) also scales each expert's unique changes by
``1 + r * min(rho, alpha)``, where ``rho`` is the expert's overlapping entries over its unique
ones in this tensor: an expert that shares much of its change with others gets its unique part
amplified, to make up for what averaging takes from the shared part. mergekit's ``ram`` and
``ramplus_tl``.
"""

from __future__ import annotations

import torch

from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def ram_tensors(
    base: torch.Tensor, tensors: list[torch.Tensor], epsilon: float, r: float = 0.0, alpha: float = 0.0
) -> torch.Tensor:
    if not tensors:
        return base
    dtype = base.dtype  # mergekit's arithmetic: in the inputs' dtype, bf16 / fp16 included
    b = base.to(dtype)
    tvs = torch.stack([t.to(dtype).reshape(-1) for t in tensors]) - b.reshape(1, -1)
    contributes = tvs.abs() > epsilon
    count = contributes.sum(dim=0)
    unique, shared = count == 1, count > 1
    tvs = tvs * contributes
    scale = torch.ones(len(tensors), 1, dtype=dtype, device=tvs.device)
    if r:
        # Counts divided as mergekit divides them: a float32 ratio (half deltas then sum in float32)
        n_shared = (contributes & shared).sum(dim=1)
        n_unique = (contributes & unique).sum(dim=1)
        rho = n_shared / n_unique.clamp(min=epsilon)
        scale = (1 + r * rho.clamp(min=0, max=alpha)).unsqueeze(1)
    merged = (tvs * unique * scale + tvs * shared / count.clamp(min=1)).sum(dim=0)
    return (b + merged.reshape(base.shape)).to(base.dtype)


EPSILON = Param("epsilon", float, default=1e-5, low=0.0, why="it is a magnitude threshold")


@merge_method("ram", params=(EPSILON,), base=BasePolicy.REQUIRED, min_inputs=0,
              reference="https://arxiv.org/abs/2601.13572")
def ram(group: TensorGroup, epsilon: float = 1e-5) -> torch.Tensor:
    return ram_tensors(group.base, group.tensors, epsilon)


@merge_method(
    "ramplus_tl",
    params=(
        Param("r", float, default=0.1, low=0.0, why="it scales an amplification"),
        Param("alpha", float, default=0.2, low=0.0, why="it caps the overlap ratio"),
        EPSILON,
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2601.13572",
)
def ramplus_tl(group: TensorGroup, r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5) -> torch.Tensor:
    return ram_tensors(group.base, group.tensors, epsilon, r, alpha)
