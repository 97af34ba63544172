"""Small tensor helpers shared by the merge methods."""

from __future__ import annotations

import torch


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """Float64 stays float64; everything else is accumulated in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def weighted_sum(
    tensors: list[torch.Tensor], weights: list[float], dtype: torch.dtype
) -> torch.Tensor:
    out = torch.zeros_like(tensors[0], dtype=dtype)
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t, alpha=w)  # promotes t to the accumulator's dtype
    return out
