"""STAR: Spectral Truncation and Rescale (Lee et al., NAACL 2025, arXiv 2502.10339).

Each expert's task vector of a 2-D weight, ``tau_t = U diag(s) V^T`` (singular values in
decreasing order), is cut to its smallest rank ``r`` whose singular values sum to at least
``eta`` percent of the nuclear norm ``sum(s)`` (at least one), and the kept values are rescaled
by ``sum(s) / sum(s[:r])`` so that the nuclear norm stays what it was:
``tau_t' = U_r diag(s_r * sum(s) / sum(s_r)) V_r^T``. Truncation drops the small, noisy
directions in which tasks collide; rescaling keeps the task vector's size. The processed task
vectors are averaged (weight ``1 / T`` each, no other coefficient) and added to the base. A zero
task vector stays zero. Other tensors (norms, biases, embedding and head tables; see
``_spectral``) get the mean task vector.

Follows the official code (github.com/IBM/STAR, ``merger/STAR.py`` then a simple average): the
rank is the first index where the cumulative sum reaches ``eta / 100`` of the total, plus one.
It merges LoRA adapters, so it only ever meets the adapted projection matrices; the averaging of
everything else is evomerge's. Its optional ``torch.svd_lowrank`` for a known LoRA rank is not
offered: full fine-tunes have no such rank.
"""

from __future__ import annotations

import torch

from evomerge.merge._spectral import spectral_merge, svd
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def star_truncate(tv: torch.Tensor, eta: float, name: str = "") -> torch.Tensor:
    """One task vector, truncated to ``eta`` percent of its nuclear norm and rescaled to it."""
    u, s, vh = svd(tv, "star", name)
    total = s.sum()
    if total.item() == 0.0:  # nothing to keep; avoids 0 / 0
        return torch.zeros_like(tv)
    cumulative = torch.cumsum(s, dim=0)
    r = int(torch.searchsorted(cumulative, total * (eta / 100)).item()) + 1
    r = min(r, s.numel())  # rounding can leave the last cumulative sum a hair below the total
    kept = s[:r] * (total / s[:r].sum())
    return (u[:, :r] * kept) @ vh[:r]


def star_delta(tvs: list[torch.Tensor], eta: float, name: str = "") -> torch.Tensor:
    total = star_truncate(tvs[0], eta, name)
    for tv in tvs[1:]:
        total += star_truncate(tv, eta, name)
    return total / len(tvs)


@merge_method(
    "star",
    params=(
        Param("eta", float, default=40.0, low=0.0, high=100.0,
              why="it is the percentage of each task vector's nuclear norm kept"),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2502.10339",
)
def star(group: TensorGroup, eta: float = 40.0) -> torch.Tensor:
    return spectral_merge(group, "star", lambda tvs: star_delta(tvs, eta, group.name), 1.0)
