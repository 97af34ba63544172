"""Arcee Fusion: take the other model's change only where it matters most.

Each entry's importance is the size of its change, |other - base|, times how far the row's
softmax moved (the KL divergence of softmax(other row) from softmax(base row), over the last
dimension; a vector is one row). Entries whose importance reaches median + 1.5 x IQR of all
importances (the upper Tukey fence) take the other model's value; the rest keep the base's.

Quantiles are the lower order statistics (index floor(q (n - 1)) of the sorted values), exact at
any size. mergekit's ``arcee_fusion`` computes the same below a million entries and estimates
them from a random sample above that (so its large tensors differ from run to run).
"""

from __future__ import annotations

import torch

from evomerge.merge.registry import BasePolicy, TensorGroup, merge_method

_EPS = 1e-8


def _order_statistic(values: torch.Tensor, q: float) -> torch.Tensor:
    k = int(q * (values.numel() - 1))  # the lower one, as an index into the sorted values
    return values.reshape(-1).kthvalue(k + 1).values


def arcee_fusion_tensors(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    dtype = base.dtype  # mergekit's arithmetic: in the inputs' dtype, bf16 / fp16 included
    b, o = base.to(dtype), other.to(dtype)
    p = torch.softmax(o, dim=-1) + _EPS
    q = torch.softmax(b, dim=-1) + _EPS
    importance = (o - b).abs() * (p * (p / q).log()).sum(dim=-1, keepdim=True)
    q1, median, q3 = (_order_statistic(importance, f) for f in (0.25, 0.5, 0.75))
    fused = importance >= median + 1.5 * (q3 - q1)
    # As mergekit: the base plus the masked difference, with a float32 mask (half: the sum in
    # float32, rounded once)
    return (b + (o - b) * fused.float()).to(base.dtype)


@merge_method(
    "arcee_fusion",
    base=BasePolicy.REQUIRED,
    min_inputs=1,
    max_inputs=1,
    reference="https://www.arcee.ai/blog/meet-mergekit-v0-1-arcee-fusion-expanded-model-support-multi-gpu-acceleration",
)
def arcee_fusion(group: TensorGroup) -> torch.Tensor:
    return arcee_fusion_tensors(group.base, group.tensors[0])
