"""PCB-merging: parameter competition balancing (Du et al., NeurIPS 2024, arXiv 2410.02396).

Each entry of each task vector ``tau_i`` (model minus base; ``T`` of them, ``d`` entries per
tensor) gets a score from how much it matters within its task and how well it agrees with the
others; the entries with the top ``pcb_ratio`` scores of each task are kept, weighted by their
score, and averaged. As in the official ``pcb-merging.py``, per tensor and per task:

    clip       |tau_i| clipped to its sorted values at indices int(d * 1e-4) and
               int(d * (1 - 1e-4) - 1), signs kept: ``c_i`` (tames outliers)
    intra      exp(T * minmax(|c_i|)^2)            (the paper's softmax within the task; its
               denominator is one constant per task, which the final min-max removes)
    inter      tanh(tau_i * sum_j tau_j)           (agreement with the summed task vectors)
    drop       s_i = intra * inter, raised to its sorted value at index int(d * (1 - pcb_ratio))
               and min-max normalised: the top ``pcb_ratio`` fraction keep a weight in (0, 1],
               the rest 0
    merge      out = base + sum_i weight_i * s_i * c_i / max(sum_i s_i, 1e-12)

``weight`` is the official code's per-task ``lams`` (1.2 there for ViT, searched in [0.8, 1.3]
by its evolutionary variant); the paper writes one lambda for all tasks.

Where this differs from the official code: scores, quantiles and normalisation are per tensor
(the official code flattens the whole model into one vector; a streamed merge sees one tensor at
a time); a min-max over equal values gives 0 instead of NaN, so an all-zero task vector, or a
``pcb_ratio`` so small that no entry clears the threshold, leaves the base unchanged; ``intra``
is computed as exp(T * (x^2 - 1)), the same after normalisation but finite for any ``T``. The
paper's inter-balancing (a softmax over tasks of tau_i * tau_j) differs from its code, which is
followed here; so does its drop step (a hard mask of the top-r scores, not a min-max ramp).
"""

from __future__ import annotations

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method

CLIP = 1e-4  # the fraction of each task vector's smallest and largest magnitudes clipped


def _sorted_at(x: torch.Tensor, index: int) -> torch.Tensor:
    """Each row's ``index``-th smallest value (0-based, clamped to the row), as a column."""
    k = min(max(index, 0), x.shape[1] - 1) + 1
    return x.kthvalue(k, dim=1, keepdim=True).values


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Rows rescaled to [0, 1]; a row of equal values becomes 0 (the official code: NaN)."""
    low = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1), 0)


def pcb_tensors(
    base: torch.Tensor, tensors: list[torch.Tensor], weight: list[float], pcb_ratio: float
) -> torch.Tensor:
    if not tensors or base.numel() == 0:
        return base
    dtype = work_dtype(base)
    b = base.to(dtype)
    tvs = torch.stack([t.to(dtype).reshape(-1) for t in tensors]) - b.reshape(1, -1)
    n, d = tvs.shape
    mags = tvs.abs()
    mags.clamp_(_sorted_at(mags, int(d * CLIP)), _sorted_at(mags, int(d * (1 - CLIP) - 1)))
    # exp(n x^2) / e^n: the min-max below ignores the constant, and exp never overflows.
    score = _minmax(mags).square_().sub_(1).mul_(n).exp_()
    score.mul_(torch.tanh(tvs * tvs.sum(dim=0, keepdim=True)))
    scale = _minmax(score.clamp_(min=_sorted_at(score, int(d * (1 - pcb_ratio)))))
    del score
    lam = torch.tensor(weight, dtype=dtype, device=b.device).unsqueeze(1)
    kept = tvs.sign_().mul_(mags).mul_(scale).mul_(lam)  # weight * scale * clipped task vector
    merged = kept.sum(dim=0) / scale.sum(dim=0).clamp(min=1e-12)
    return (b + merged.reshape(base.shape)).to(base.dtype)


@merge_method(
    "pcb",
    params=(
        Param("weight", float, Scope.PER_MODEL, default=1.0, low=0.0, high=2.0,
              why="it scales a task vector (the official code's lams: 1.2, searched in [0.8, 1.3])"),
        Param("pcb_ratio", float, default=0.1, low=0.0, high=1.0,
              why="it is the fraction of each task vector's entries kept"),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2410.02396",
)
def pcb(group: TensorGroup, weight: list[float], pcb_ratio: float = 0.1) -> torch.Tensor:
    return pcb_tensors(group.base, group.tensors, weight, pcb_ratio)
