"""Sparsification of task vectors: which entries of a delta survive.

* ``magnitude`` (TIES): keep the ``density`` fraction of largest magnitudes;
* ``random`` (DARE): keep each entry with probability ``density``;
* ``magnitude_outliers`` (Model Breadcrumbs): drop the ``gamma`` fraction of
  largest magnitudes, then the smallest, keeping ``density``;
* ``della_magprune`` (DELLA): keep with a probability that grows linearly with
  the entry's magnitude rank in its row, from ``density - epsilon`` to
  ``density + epsilon``.

With ``rescale`` the survivors are multiplied by the ratio of L1 norms before
and after (mergekit's convention; DARE's 1/density is the same in expectation).

Speed matters here: this is the hot loop of every TIES/DARE merge. Deltas are
never materialised whole; ``delta_chunks`` yields them in cache-sized pieces.
Magnitude thresholds are exact order statistics found without sorting: a small
sample brackets the target rank, one counting pass finds how many entries lie
above the bracket, and only the entries inside it are selected among. Entries
tied exactly at the threshold are all kept (for real weights that happens only
for zeros, which change nothing). Random masks draw 16-bit uniforms (the kept
probability is density rounded to 1/65536) from a stream seeded per tensor
and model, so the same seed gives the same bytes however the work is chunked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

CHUNK = 1 << 19  # elements per piece on the CPU: a few such buffers stay in cache
_SAMPLE = 1 << 15
_RESCALE_EPS = 1e-7


def chunk_size(t: torch.Tensor) -> int:
    return CHUNK if t.device.type == "cpu" else max(t.numel(), 1)


def delta_chunks(x: torch.Tensor, base: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(x - base)`` flattened, in pieces, as fresh tensors the caller may modify."""
    xf, bf = x.reshape(-1), base.reshape(-1)
    step = chunk_size(base)
    for start in range(0, bf.numel(), step):
        sl = slice(start, min(start + step, bf.numel()))
        yield sl, torch.sub(xf[sl], bf[sl])


# -- exact order statistics of |x - base| -------------------------------------------------


def _select(values: torch.Tensor, ranks: list[int]) -> list[float]:
    """Values at 1-based ascending ``ranks`` of a flat tensor (numpy's introselect is fast)."""
    arr = values.detach().float().cpu().numpy()
    kth = sorted({r - 1 for r in ranks})
    part = np.partition(arr, kth)
    return [float(part[r - 1]) for r in ranks]


def magnitude_order_stats(x: torch.Tensor, base: torch.Tensor, ranks: list[int]) -> list[float]:
    """Values of |x - base| at 1-based ascending ``ranks`` (1 = smallest)."""
    n = base.numel()
    xf, bf = x.reshape(-1), base.reshape(-1)
    if n <= 4 * _SAMPLE:
        return _select((xf - bf).abs(), ranks)
    gen = torch.Generator(device="cpu").manual_seed(n)
    idx = torch.randint(0, n, (_SAMPLE,), generator=gen).to(base.device)
    sample = (xf[idx] - bf[idx]).abs()
    positions = []
    for r in ranks:
        pos = (r - 0.5) / n * _SAMPLE
        margin = 6 * math.sqrt(_SAMPLE * (r / n) * (1 - r / n)) + 8
        positions += [max(int(pos - margin), 0) + 1, min(int(pos + margin), _SAMPLE - 1) + 1]
    bounds = _select(sample, positions)
    windows = [(bounds[2 * j], bounds[2 * j + 1]) for j in range(len(ranks))]
    below = [0] * len(ranks)
    inside: list[list[torch.Tensor]] = [[] for _ in ranks]
    for _, d in delta_chunks(x, base):
        mags = d.abs_()
        for j, (lo, hi) in enumerate(windows):
            in_window = mags >= lo
            below[j] += mags.numel() - int(torch.count_nonzero(in_window))
            in_window.logical_and_(mags <= hi)
            inside[j].append(mags[in_window])
    out = []
    for j, r in enumerate(ranks):
        cand = torch.cat(inside[j])
        if below[j] < r <= below[j] + cand.numel():
            out.append(_select(cand, [r - below[j]])[0])
        else:  # the sample missed the rank (vanishingly rare): select over everything
            out.append(_select((xf - bf).abs(), [r])[0])
    return out


# -- random keep masks ----------------------------------------------------------------------


class Uniform16:
    """Deterministic 16-bit uniforms for one (tensor, model) stream, on the tensor's device."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        if device.type == "cpu":
            self._np = np.random.Generator(np.random.PCG64(seed))
        else:
            self._torch = torch.Generator(device=device).manual_seed(seed)

    def draw(self, count: int) -> torch.Tensor:
        """``count`` integers uniform on [0, 65536), as int32."""
        if self.device.type == "cpu":
            return torch.from_numpy(
                self._np.integers(0, 1 << 16, count, dtype=np.uint16).astype(np.int32)
            )
        return torch.randint(
            0, 1 << 16, (count,), generator=self._torch, device=self.device, dtype=torch.int32
        )


def keep_threshold(density: float) -> int:
    return round(min(max(density, 0.0), 1.0) * 65536)


def random_mask(
    x: torch.Tensor, base: torch.Tensor, density: float, rng: Uniform16, rescale: bool
) -> tuple[torch.Tensor, float]:
    """A DARE keep mask (bool, flat) and the L1 rescale factor (1 without rescale)."""
    thr = keep_threshold(density)
    keep = torch.empty(base.numel(), dtype=torch.bool, device=base.device)
    before = after = 0.0
    for sl, d in delta_chunks(x, base):
        k = rng.draw(d.numel()).to(base.device) < thr
        keep[sl] = k
        if rescale:
            mags = d.abs_()
            before += mags.sum(dtype=torch.float64).item()
            after += mags.mul_(k).sum(dtype=torch.float64).item()
    return keep, _ratio(before, after) if rescale else 1.0


def _ratio(before: float, after: float) -> float:
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return 1.0
    return before / after


def l1_ratio_in_band(x: torch.Tensor, base: torch.Tensor, lo: float, hi: float) -> float:
    """Rescale factor when entries with lo <= |d| <= hi are kept."""
    before = after = 0.0
    for _, d in delta_chunks(x, base):
        mags = d.abs_()
        before += mags.sum(dtype=torch.float64).item()
        after += torch.where((mags >= lo) & (mags <= hi), mags, 0).sum(dtype=torch.float64).item()
    return _ratio(before, after)


# -- DELLA -------------------------------------------------------------------------------------


def della_magprune(
    delta: torch.Tensor, density: float, rescale: bool, epsilon: float, rng: Uniform16
) -> torch.Tensor:
    """DELLA's rank-dependent random pruning, on a whole delta (rows are ranked independently)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"DELLA needs density +/- epsilon inside (0, 1); got density={density}, epsilon={epsilon}. "
            "Lower epsilon or move density away from 0 and 1"
        )
    shape = delta.shape
    work = delta.float() if delta.device.type == "cpu" and delta.dtype != torch.bfloat16 else delta
    rows = work if work.dim() >= 2 else work.unsqueeze(0)
    rows = rows.reshape(rows.shape[0], -1) if rows.dim() > 2 else rows
    width = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1)
    ranks = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    ranks.scatter_(
        1,
        order,
        torch.arange(width, dtype=torch.float32, device=rows.device).expand_as(order).contiguous(),
    )
    if width > 1:
        ranks.div_(width - 1)
    probs = ranks.mul_(2 * epsilon).add_(density - epsilon)  # linear in rank, mean = density
    u = rng.draw(rows.numel()).to(rows.device).reshape(rows.shape).float().add_(0.5).div_(65536)
    keep = u < probs
    masked = torch.where(keep, rows, 0)
    if rescale:
        masked = masked * _ratio(
            rows.abs().sum(dtype=torch.float64).item(), masked.abs().sum(dtype=torch.float64).item()
        )
    return masked.to(delta.dtype).reshape(shape)
