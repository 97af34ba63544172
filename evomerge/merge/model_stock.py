"""Model Stock (arXiv:2403.19522): move from the base towards the average of the
fine-tuned models by a ratio set by the angle between their task vectors.

With more than two models the pairwise cosines are averaged. ``filter_wise``
computes one ratio per row instead of one per tensor.
"""

from __future__ import annotations

import torch

from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


@merge_method(
    "model_stock",
    params=(Param("filter_wise", bool, default=False),),
    base=BasePolicy.REQUIRED,
    min_inputs=2,
    reference="https://arxiv.org/abs/2403.19522",
)
def model_stock(group: TensorGroup, filter_wise: bool = False) -> torch.Tensor:
    w0 = group.base
    shape = w0.shape
    if filter_wise:
        ws = list(group.tensors)
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in group.tensors]
    offsets = [w - w0 for w in ws]
    norms = [torch.linalg.vector_norm(o, dim=-1) for o in offsets]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            dot = (offsets[i] * offsets[j]).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    ratio = torch.where(
        singular,
        torch.zeros_like(cos),
        n * cos / torch.where(singular, torch.ones_like(denom), denom),
    )
    average = sum(ws) / n
    return (ratio * average + (1 - ratio) * w0).reshape(shape)
