"""TSV-Merge (Task Singular Vectors, Gargiulo et al., CVPR 2025, arXiv 2412.00081).

For a 2-D weight, each expert's task vector ``tau_t = U_t S_t V_t^T`` keeps its top ``r``
singular triplets, ``r = floor(rank_fraction * min(rows, cols))`` (by default ``min(rows, cols)
// T`` for T experts, as the official code's ``1 / T`` share; at least one). The kept triplets
of all experts are stacked, ``U = [U_1 .. U_T]``, ``S = [S_1 .. S_T]``, ``V = [V_1 .. V_T]``.
The experts' singular vectors overlap, and summing overlapping directions is the interference
the paper measures; so ``U`` and ``V`` are replaced by their nearest matrices with orthonormal
columns (the polar factor ``P Q^T`` of their SVD ``P D Q^T``), and the merged delta is
``alpha * U_perp diag(S) V_perp^T``, added to the base. Other tensors (norms, biases, embedding
and head tables; see ``_spectral``) get ``alpha`` times the mean task vector.

Differences from the official code (github.com/AntoAndGar/task_singular_vectors): it zero-pads
the stacked vectors to ``min(rows, cols)`` columns, which changes nothing (the padding meets zero
singular values), and it cannot keep more than ``1 / T`` per expert; here ``rank_fraction`` may go
up to 1, and then the polar factor of the wider stack has orthonormal rows instead. Singular
triplets at the SVD's noise floor (a task vector of lower rank than ``r``, a zero one) are left
out, and so are the null directions of a rank-deficient stack (experts sharing a singular
vector): the official code keeps them, and with them directions the SVD routine picks
arbitrarily. On full-rank task vectors of distinct experts the two agree. Its vocabulary
tables, never fine-tuned there, go through the SVD; here they are averaged.
"""

from __future__ import annotations

import math

import torch

from evomerge.merge._spectral import noise_floor, polar, spectral_merge, svd
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def kept_rank(rows: int, cols: int, experts: int, rank_fraction: float | None) -> int:
    k = min(rows, cols)
    if rank_fraction is None:
        return max(1, k // experts)
    return max(1, min(k, math.floor(k * rank_fraction + 1e-9)))  # 1e-9: 0.3 * 10 is 2.9999...


def tsv_delta(tvs: list[torch.Tensor], rank_fraction: float | None, name: str = "") -> torch.Tensor:
    """The TSV merge of 2-D task vectors, before ``alpha``."""
    r = kept_rank(*tvs[0].shape, len(tvs), rank_fraction)
    us, ss, vhs = [], [], []
    for tv in tvs:
        u, s, vh = svd(tv, "tsv", name)
        # A triplet with a zero singular value adds nothing to U diag(S) Vh, but its vectors are
        # arbitrary and would bend the orthogonalisation of the others: leave it out.
        kept = min(r, int((s > noise_floor(s, tv.shape)).sum()))
        us.append(u[:, :kept])
        ss.append(s[:kept])
        vhs.append(vh[:kept])
    u_perp = polar(torch.cat(us, dim=1), "tsv", name)
    vh_perp = polar(torch.cat(vhs, dim=0), "tsv", name)
    return (u_perp * torch.cat(ss)) @ vh_perp  # U diag(S) Vh without building diag(S)


@merge_method(
    "tsv",
    params=(
        Param("alpha", float, default=1.0, low=0.0, high=3.0,
              why="it scales the merged task vector; the paper searches [0, 3]"),
        Param("rank_fraction", float, default=None, low=0.0, high=1.0,
              why="it is the fraction of each task vector's singular components kept"),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2412.00081",
)
def tsv(group: TensorGroup, alpha: float = 1.0, rank_fraction: float | None = None) -> torch.Tensor:
    return spectral_merge(
        group, "tsv", lambda tvs: tsv_delta(tvs, rank_fraction, group.name), alpha
    )
