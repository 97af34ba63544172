"""NearSwap: take the other model's value where it is close to the base's, keep the base's elsewhere.

Per entry, the share of the other model is ``t / |base - other|`` clipped to [0, 1]: entries that
differ by at most ``t`` are swapped in whole, larger differences only in proportion (so a
fine-tune's small adjustments come through and its large departures are damped). The distance is
floored at 1e-6 so identical entries do not divide by zero. mergekit's ``nearswap``
(alchemonaut, QuartetAnemoi-70B), with its arithmetic: every operation in the inputs' dtype
(``share * other + (1 - share) * base``, each step rounded there), so the two agree bit for bit.
"""

from __future__ import annotations

import torch

from evomerge.merge._util import new_output
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method

MIN_DISTANCE = 1e-6


def nearswap_tensors(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    # mergekit: w = (t / |a - b|.clamp(min=1e-6)).clamp(0, 1); w * b + (1 - w) * a. The same
    # operations, in place where that gives the same bits (t / x is torch's reciprocal(x) * t;
    # 1 - w is -w + 1 exactly), so only the share and the output are whole-tensor buffers.
    share = torch.sub(base, other).abs_().clamp_(min=MIN_DISTANCE).reciprocal_().mul_(t).clamp_(0, 1)
    out = torch.mul(share, other, out=new_output(share.shape, share.dtype, share.device))
    out.add_(share.neg_().add_(1).mul_(base))
    return out.to(base.dtype)


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
