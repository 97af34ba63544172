"""NearSwap: take the other model's value where it is close to the base's, keep the base's elsewhere.

Per entry, the share of the other model is ``t / |base - other|`` clipped to [0, 1]: entries that
differ by at most ``t`` are swapped in whole, larger differences only in proportion (so a
fine-tune's small adjustments come through and its large departures are damped). The distance is
floored at 1e-6 so identical entries do not divide by zero. mergekit's ``nearswap``
(alchemonaut, QuartetAnemoi-70B).
"""

from __future__ import annotations

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method

MIN_DISTANCE = 1e-6


def nearswap_tensors(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    dtype = work_dtype(base)
    a, b = base.to(dtype), other.to(dtype)
    share = (t / (a - b).abs_().clamp_(min=MIN_DISTANCE)).clamp_(0.0, 1.0)
    return torch.lerp(a, b, share).to(base.dtype)


@merge_method(
    "nearswap",
    params=(Param("t", float, low=0.0, why="it is the distance up to which entries are swapped in whole"),),
    base=BasePolicy.REQUIRED,
    min_inputs=1,
    max_inputs=1,
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
)
def nearswap(group: TensorGroup, t: float) -> torch.Tensor:
    return nearswap_tensors(t, group.base, group.tensors[0])
