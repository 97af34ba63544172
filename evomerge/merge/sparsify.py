"""Sparsification of task vectors: which entries of a delta survive.

* ``magnitude`` (TIES): keep the ``density`` fraction of largest magnitudes;
* ``random`` (DARE): keep each entry with probability ``density``;
* ``magnitude_outliers`` (Model Breadcrumbs): drop the ``gamma`` fraction of
  largest magnitudes, then the smallest, keeping ``density``;
* ``della_magprune`` (DELLA): keep with a probability that grows linearly with
  the entry's magnitude rank in its row, from ``density - epsilon`` to
  ``density + epsilon``.

With ``rescale`` the survivors are multiplied by the ratio of L1 norms before
and after, so the delta keeps its total magnitude (mergekit's convention; the
DARE paper's 1/density is the same in expectation).

Magnitude selection finds the k-th largest magnitude with a linear-time
selection instead of a full sort; entries tied exactly at the threshold are all
kept (with continuous weights that happens only for zeros, which change nothing).
"""

from __future__ import annotations

import torch

_RESCALE_EPS = 1e-7


def rescale_l1(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    before = original.abs().sum()
    after = masked.abs().sum()
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return masked
    return masked.mul_(before / after)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a flat tensor (1 <= k <= numel)."""
    n = values.numel()
    if values.device.type == "cpu" and values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    return torch.kthvalue(values, n - k + 1).values


def magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mags = delta.abs()
    threshold = kth_largest(mags.reshape(-1), k)
    masked = torch.where(mags >= threshold, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))
    return rescale_l1(delta, masked) if rescale else masked


def magnitude_outliers(delta: torch.Tensor, density: float, rescale: bool, gamma: float) -> torch.Tensor:
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - keep - n_top)
    zero = torch.zeros((), dtype=delta.dtype, device=delta.device)
    if keep <= 0:
        return torch.zeros_like(delta)
    mags = delta.abs()
    flat = mags.reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    # Keep ascending ranks [n_bottom, n_bottom + keep): between two order statistics.
    low = torch.kthvalue(flat, n_bottom + 1).values
    high = torch.kthvalue(flat, n_bottom + keep).values
    masked = torch.where((mags >= low) & (mags <= high), delta, zero)
    return rescale_l1(delta, masked) if rescale else masked


def random(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None) -> torch.Tensor:
    if density >= 1:
        return delta
    work = delta if delta.dtype == torch.bfloat16 or delta.device.type != "cpu" else delta.float()
    keep = torch.rand(work.shape, generator=generator, device=work.device, dtype=torch.float32) < density
    masked = torch.where(keep, work, torch.zeros((), dtype=work.dtype, device=work.device))
    if rescale:
        masked = rescale_l1(work, masked)
    return masked.to(delta.dtype)


def della_magprune(
    delta: torch.Tensor, density: float, rescale: bool, epsilon: float, generator: torch.Generator | None
) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"DELLA needs density +/- epsilon inside (0, 1); got density={density}, epsilon={epsilon}. "
            "Lower epsilon or move density away from 0 and 1."
        )
    shape = delta.shape
    work_dtype = delta.dtype if delta.device.type != "cpu" or delta.dtype == torch.bfloat16 else torch.float32
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    order = torch.argsort(rows.abs(), dim=1)
    width = rows.shape[1]
    # rank of each entry in its row, 0 = smallest magnitude, scaled to [0, 1]
    ranks = torch.empty(rows.shape, dtype=work_dtype, device=rows.device)
    positions = torch.arange(width, dtype=work_dtype, device=rows.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    if width > 1:
        ranks.div_(width - 1)
    probs = ranks.mul_(2 * epsilon).add_(density - epsilon)
    keep = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype) < probs
    work = rows.to(work_dtype)
    masked = torch.where(keep, work, torch.zeros((), dtype=work_dtype, device=work.device))
    if rescale:
        masked = rescale_l1(work, masked)
    return masked.to(delta.dtype).reshape(shape)
