"""CABS: conflict-aware and balanced sparsification (Yang et al., ICML 2025, arXiv 2503.01874).

Sparsified task vectors still collide when several keep the same entries, and global top-k
keeps whole rows of one task while emptying others. CABS prunes the task vectors one after
another, in the recipe's order of models:

    conflict-aware  a task may keep only entries no earlier task kept (the masks never overlap);
    balanced        n:m pruning: of every ``m`` consecutive entries (row-major) the task keeps
                    the ``n`` largest in magnitude among those still free;

and the result is ``base + sum_i weight_i * mask_i * (model_i - base)``. As in the official code
(``n_m_block_pruning`` in the CABS repository, and mergekit's ``cabs``), a task claims ``n``
entries of a block even where some of its changes there are zero, and a block with fewer than
``n`` free entries gives it all of them. Ties in magnitude go to the earlier entry. A last,
shorter block keeps its ``n`` largest, as mergekit pads it; the RoBERTa script of the paper
drops it instead. The paper's 7B experiments use n:m = 64:256 with ``weight`` 1.2; mergekit's
``cabs`` orders the models by name unless given ``pruning_order``, evomerge by the recipe.
"""

from __future__ import annotations

from typing import Any

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


def nm_mask(magnitude: torch.Tensor, free: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Flat bool mask keeping, of every ``m`` consecutive entries, the ``n`` largest of
    ``magnitude`` (>= 0) among those where ``free`` is true; ties go to the earlier entry."""
    d = magnitude.numel()
    blocks = -(-d // m)
    # Taken entries, and the padding of a last, shorter block, rank last (-1).
    rank = torch.full((blocks * m,), -1, dtype=torch.int64, device=magnitude.device)
    if magnitude.dtype == torch.float64:  # its bits leave no room for the position: sort
        rank = rank.to(torch.float64)
        rank[:d] = torch.where(free, magnitude, -1.0)
        rank = rank.view(blocks, m)
        top = torch.sort(rank, dim=1, descending=True, stable=True).indices[:, :n]
    else:
        # One distinct integer per entry, which topk ranks faster than a sort: a non-negative
        # float32's bits order as the float does, and the position in the block, reversed,
        # gives a tie to the earlier entry.
        rank[:d] = torch.where(free, magnitude.to(torch.float32).view(torch.int32).to(torch.int64), -1)
        rank = rank.view(blocks, m)
        position = torch.arange(m - 1, -1, -1, device=rank.device)
        rank = torch.where(rank >= 0, rank * m + position, rank)
        top = rank.topk(n, dim=1).indices
    keep = torch.zeros_like(rank, dtype=torch.bool).scatter_(1, top, True) & (rank >= 0)
    return keep.view(-1)[:d]


def cabs_masks(base: torch.Tensor, tensors: list[torch.Tensor], n: int, m: int):
    """``(task vector, mask)`` per input, flat and in order: each mask keeps n of every m
    entries among those the earlier masks left free."""
    dtype = work_dtype(base)
    flat_b = base.to(dtype).reshape(-1)
    free = torch.ones_like(flat_b, dtype=torch.bool)
    for x in tensors:
        tv = x.to(dtype).reshape(-1) - flat_b
        keep = nm_mask(tv.abs(), free, n, m)
        free &= ~keep
        yield tv, keep


def cabs_tensors(
    base: torch.Tensor, tensors: list[torch.Tensor], weight: list[float], n: int, m: int
) -> torch.Tensor:
    if not tensors:
        return base
    dtype = work_dtype(base)
    merged = base.to(dtype).reshape(-1).clone()
    for (tv, keep), w in zip(cabs_masks(base, tensors, n, m), weight, strict=True):
        merged.add_(torch.where(keep, tv, 0), alpha=w)
    return merged.reshape(base.shape).to(base.dtype)


def _n_within_m(p: dict[str, Any]) -> str | None:
    if p["n"] > p["m"]:
        return f"n = {p['n']} is more than m = {p['m']}: a block of m entries cannot keep n; lower n or raise m"
    return None


@merge_method(
    "cabs",
    params=(
        Param("weight", float, Scope.PER_MODEL, default=1.0, low=0.0, high=2.0,
              why="it scales a pruned task vector; the paper's 7B merge uses 1.2"),
        Param("n", int, default=64, low=0, high=4096, why="it is the entries kept per block"),
        Param("m", int, default=256, low=1, high=4096, why="it is the block length"),
    ),
    base=BasePolicy.REQUIRED,
    min_inputs=0,
    reference="https://arxiv.org/abs/2503.01874",
    check=_n_within_m,
)
def cabs(group: TensorGroup, weight: list[float], n: int = 64, m: int = 256) -> torch.Tensor:
    n, m = int(n), int(m)
    if not 0 <= n <= m or m < 1:
        raise ValueError(f"cabs on tensor {group.name}: n:m = {n}:{m} needs 0 <= n <= m and m >= 1; "
                         f"set n and m in the recipe's parameters accordingly.")
    return cabs_tensors(group.base, group.tensors, weight, n, m)
