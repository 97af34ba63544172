"""Iso-C and Iso-CTS: isotropic merging (Marczak et al., "No Task Left Behind", ICML 2025,
arXiv 2502.04959).

The sum of the task vectors, ``M = sum_t tau_t``, has a spectrum dominated by a few directions,
so the tasks whose directions have small singular values are drowned out. Iso-C (``iso_c``)
flattens it: with ``M = U diag(S) V^T``, the merged delta is ``alpha * mean(S) * U V^T`` (every
singular value replaced by their mean, which keeps the nuclear norm of ``M``).

Iso-CTS (``iso_cts``) also makes room for directions only one task uses. With ``k = min(rows,
cols)`` and T experts: ``c = int(k * common_space_fraction)`` directions are kept from ``M``
(its top singular vectors); the remaining ``k - c`` are shared equally, ``s = round((k - c) / T)``
per task (``c`` is then ``k - T s``, so the two parts fill ``k``). Each task vector, projected off
the common left subspace (``tau_t - U_c U_c^T tau_t``), gives its top ``s`` singular triplets.
The common and task-specific vectors are stacked, ``U`` and ``V`` replaced by their polar factors
(nearest orthonormal columns), and all ``k`` stacked singular values by their mean:
``alpha * mean(S) * U_perp V_perp^T``. ``common_space_fraction`` 1 gives Iso-C.

Other tensors (norms, biases, embedding and head tables; see ``_spectral``) get ``alpha`` times
the mean task vector, as the official code (github.com/danielm1405/iso-merging) averages them.
Differences from it: ``s`` is capped at ``k // T`` (the official rounding can ask for more
directions than a small matrix has); vocabulary tables are averaged (see ``_spectral``); and
singular values at the SVD's noise floor (below ``S_max * max(rows, cols) * eps``, numpy's rank
tolerance) are left out of the spectrum and of the mean. The official code gives them the mean
too, along directions the SVD routine picks arbitrarily for a rank-deficient ``M``: an update of
LoRA experts, whose sum has rank at most the sum of their ranks, would gain ``min(rows, cols)``
minus that many arbitrary directions at full weight. On full-rank ``M`` the two agree.
"""

from __future__ import annotations

import torch

from evomerge.merge._spectral import noise_floor, polar, spectral_merge, summed, svd
from evomerge.merge.registry import BasePolicy, Param, TensorGroup, merge_method


def iso_c_delta(tvs: list[torch.Tensor], name: str = "") -> torch.Tensor:
    """The Iso-C merge of 2-D task vectors, before ``alpha``."""
    total = summed(tvs)
    u, s, vh = svd(total, "iso_c", name)
    rank = int((s > noise_floor(s, total.shape)).sum())
    if rank == 0:
        return torch.zeros_like(total)
    return s[:rank].mean() * (u[:, :rank] @ vh[:rank])


def subspace_sizes(rows: int, cols: int, experts: int, common_space_fraction: float) -> tuple[int, int]:
    """(common directions, directions per task) for Iso-CTS; together they fill min(rows, cols)."""
    k = min(rows, cols)
    common = int(k * common_space_fraction)
    # Python's round (half to even), as the official code; capped so T blocks fit in k.
    per_task = min(round((k - common) / experts), k // experts)
    return k - per_task * experts, per_task


def iso_cts_delta(tvs: list[torch.Tensor], common_space_fraction: float, name: str = "") -> torch.Tensor:
    """The Iso-CTS merge of 2-D task vectors, before ``alpha``."""
    common, per_task = subspace_sizes(*tvs[0].shape, len(tvs), common_space_fraction)
    total = summed(tvs)
    u, s, vh = svd(total, "iso_cts", name)
    floor = noise_floor(s, total.shape)  # one scale for all: a residual below it is rounding error
    common = min(common, int((s > floor).sum()))
    uc = u[:, :common]
    us, ss, vhs = [uc], [s[:common]], [vh[:common]]
    if per_task:
        for tv in tvs:
            specific = tv - uc @ (uc.T @ tv)  # off the common left subspace
            ut, st, vht = svd(specific, "iso_cts", name)
            kept = min(per_task, int((st > floor).sum()))
            us.append(ut[:, :kept])
            ss.append(st[:kept])
            vhs.append(vht[:kept])
    spectrum = torch.cat(ss)
    if spectrum.numel() == 0:
        return torch.zeros_like(total)
    # The stacking order does not matter: permuting the columns of U and the rows of Vh alike
    # leaves polar(U) @ polar(Vh) unchanged.
    u_perp = polar(torch.cat(us, dim=1), "iso_cts", name)
    vh_perp = polar(torch.cat(vhs, dim=0), "iso_cts", name)
    return spectrum.mean() * (u_perp @ vh_perp)


ALPHA = Param("alpha", float, default=1.0, low=0.0, high=3.0,
              why="it scales the merged task vector; the paper searches [0, 3]")


@merge_method(
    "iso_c",
    params=(ALPHA,),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2502.04959",
)
def iso_c(group: TensorGroup, alpha: float = 1.0) -> torch.Tensor:
    return spectral_merge(group, "iso_c", lambda tvs: iso_c_delta(tvs, group.name), alpha)


@merge_method(
    "iso_cts",
    params=(
        ALPHA,
        Param("common_space_fraction", float, default=0.8, low=0.0, high=1.0,
              why="it is the fraction of the directions taken from the summed task vectors"),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2502.04959",
)
def iso_cts(group: TensorGroup, alpha: float = 1.0, common_space_fraction: float = 0.8) -> torch.Tensor:
    return spectral_merge(
        group, "iso_cts", lambda tvs: iso_cts_delta(tvs, common_space_fraction, group.name), alpha
    )
