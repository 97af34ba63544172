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
Magnitude thresholds are exact order statistics (``order_stats``). Entries
tied exactly at the threshold are all kept (for real weights that happens only
for zeros, which change nothing). Random masks draw 16-bit uniforms (the kept
probability is density rounded to 1/65536) from a stream seeded per tensor
and model, so the same seed gives the same bytes however the work is chunked.

On the CPU, float32/float64 work goes through numpy views of the tensors: its
comparisons and bool masks are several times faster than torch's there, and
every operation used is exact IEEE arithmetic, so results are bit-identical to
the torch path (kept for other devices); bf16 / fp16 are read in float32 pieces
(``_pieces``). Rescale factors' L1 sums on the CPU are numpy's pairwise float64 sums of each
block (``l1_sum``), which the compiled DARE pass reproduces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from evomerge.merge import _kernels
from evomerge.merge._pieces import Float32Pieces, flat_f32, use_half_pieces
from evomerge.merge._scratch import CHUNK, scratch

PIECE = 8 * CHUNK  # elements per task on the worker threads: many tasks balance the workers
# Rescale factors are sums of |delta| in float64, one sum per block of this many entries and the
# blocks' sums added in order: the block size is part of the result, so it stays fixed.
SUM_BLOCK = 1 << 19
_RESCALE_EPS = 1e-7
_NUMPY_DTYPES = (torch.float32, torch.float64)

T = TypeVar("T")


def chunk_size(t: torch.Tensor) -> int:
    """Pieces of the torch path (its rescale sums are per piece, so SUM_BLOCK on the CPU)."""
    return SUM_BLOCK if t.device.type == "cpu" else max(t.numel(), 1)


def use_numpy(*tensors: torch.Tensor) -> bool:
    """Whether the numpy fast path applies: CPU, one float32/float64 dtype."""
    first = tensors[0]
    return (
        first.device.type == "cpu"
        and first.dtype in _NUMPY_DTYPES
        and all(t.device.type == "cpu" and t.dtype == first.dtype for t in tensors)
    )


def flat_np(t: torch.Tensor) -> np.ndarray:
    """A flat numpy view of a CPU tensor (a copy only if it is not contiguous)."""
    return t.detach().reshape(-1).numpy()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def workers() -> int:
    return max(1, min(torch.get_num_threads(), 8))


def parallel_map(fn: Callable[..., T], *args: Sequence) -> list[T]:
    """``[fn(*a) for a in zip(*args)]`` on a small thread pool (numpy releases the GIL)."""
    global _pool
    items = list(zip(*args, strict=True))
    if len(items) <= 1 or workers() == 1:
        return [fn(*a) for a in items]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(workers(), thread_name_prefix="evomerge-merge")
    return list(_pool.map(lambda a: fn(*a), items))


def delta_chunks(x: torch.Tensor, base: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(x - base)`` flattened, in pieces, as fresh tensors the caller may modify."""
    xf, bf = x.reshape(-1), base.reshape(-1)
    step = chunk_size(base)
    for start in range(0, bf.numel(), step):
        sl = slice(start, min(start + step, bf.numel()))
        yield sl, torch.sub(xf[sl], bf[sl])


# -- random keep masks ----------------------------------------------------------------------


class Uniform16:
    """Deterministic 16-bit uniforms for one (tensor, model) stream, on the tensor's device.

    On the CPU the stream is ``numpy.random.Generator(PCG64(seed)).integers(0, 65536,
    count, dtype=uint16)``, produced here from the raw 64-bit words (several times
    faster): each word is two 32-bit halves, low first, each two 16-bit halves, low
    first; a call ending on an odd 32-bit half keeps the word's other half for the
    next call and drops the unused 16 bits, as ``integers`` does.
    """

    def __init__(self, seed: int, device: torch.device, start: int = 0) -> None:
        """``start`` (CPU, a multiple of 4): the stream from its ``start``-th uniform on, as a
        stream drawn in pieces of multiples of 4 reaches it (each 64-bit word is 4 uniforms)."""
        self.device = device
        if device.type == "cpu":
            self._bits = np.random.PCG64(seed)
            if start:
                assert start % 4 == 0, start
                self._bits.advance(start // 4)
            self._held: np.ndarray | None = None  # a kept 32-bit half, as two uint16
        else:
            self._torch = torch.Generator(device=device).manual_seed(seed)

    def draw_u16(self, count: int) -> np.ndarray:
        """CPU only: ``count`` integers uniform on [0, 65536), as uint16."""
        parts = []
        if self._held is not None and count > 0:
            parts.append(self._held[: min(count, 2)])
            count -= min(count, 2)  # (a 16-bit remainder of a 32-bit half is dropped)
            self._held = None
        halves = (count + 1) // 2  # 32-bit halves needed
        if halves:
            words = self._bits.random_raw((halves + 1) // 2).view(np.uint16)
            if halves % 2:
                self._held = words[-2:].copy()
            parts.append(words[:count])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint16)

    def draw(self, count: int) -> torch.Tensor:
        """``count`` integers uniform on [0, 65536), as int32."""
        if self.device.type == "cpu":
            return torch.from_numpy(self.draw_u16(count).astype(np.int32))
        return torch.randint(
            0, 1 << 16, (count,), generator=self._torch, device=self.device, dtype=torch.int32
        )


def keep_threshold(density: float) -> int:
    return round(min(max(density, 0.0), 1.0) * 65536)


def random_mask(
    x: torch.Tensor, base: torch.Tensor, density: float, rng: Uniform16, rescale: bool
) -> tuple[np.ndarray | torch.Tensor, float]:
    """A DARE keep mask and the L1 rescale factor (1 without rescale). On the CPU the mask is
    bit-packed (``numpy.packbits``, little bit order: an eighth of a bool mask, which for a
    128k-token embedding and three models is most of a gigabyte); read it with ``mask_piece``."""
    thr = keep_threshold(density)
    n = base.numel()
    if use_numpy(x, base) or use_half_pieces(x, base):
        keep = np.empty((n + 7) // 8, np.uint8)
        sums = _random_mask_np(flat_f32(x, "x"), flat_f32(base, "b"), thr, rng, rescale, 0, n, keep)
        return keep, _factor(*sums, rescale)
    cpu = base.device.type == "cpu"
    keep = np.empty((n + 7) // 8, np.uint8) if cpu else torch.empty(n, dtype=torch.bool, device=base.device)
    before = after = 0.0
    for sl, d in delta_chunks(x, base):
        k = rng.draw(d.numel()).to(base.device) < thr
        if cpu:
            keep[sl.start // 8 : (sl.stop + 7) // 8] = np.packbits(k.numpy(), bitorder="little")
        else:
            keep[sl] = k
        if rescale:
            mags = d.abs_()
            before += l1_sum(mags)
            after += l1_sum(mags.mul_(k))
    return keep, _ratio(before, after) if rescale else 1.0


def mask_piece(mask: np.ndarray | torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Entries ``start:stop`` of a ``random_mask`` mask, as a bool tensor (``start`` a multiple
    of 8 where the mask is packed: every chunk and piece boundary is)."""
    if isinstance(mask, torch.Tensor):
        return mask[start:stop]
    return torch.from_numpy(unpack_piece(mask, start, stop))


def unpack_piece(packed: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Entries ``start:stop`` of a bit-packed mask as a numpy bool array (chunk-sized)."""
    assert start % 8 == 0, start
    bits = np.unpackbits(packed[start // 8 : (stop + 7) // 8], count=stop - start, bitorder="little")
    return bits.view(np.bool_)


def random_masks(
    xs: list[torch.Tensor], base: torch.Tensor, densities: list[float], seeds: list[int], rescale: bool
) -> list[tuple[np.ndarray, float]]:
    """``random_mask`` of several models of one base (CPU, the numpy path's dtypes) at once,
    each model's stream ``Uniform16(seeds[i])``: the work is cut into spans of ``SPAN`` entries
    of every model, shared out on the worker threads (three models on two cores would otherwise
    leave a core idle for a third of the pass). A span's draws start where its model's stream
    stands at the span, and the L1 sums are the same per-block sums added in the same order:
    the same masks and factors as one ``random_mask`` per model."""
    n = base.numel()
    ba = flat_f32(base, "b")
    xas = [flat_f32(x, f"x{i}") for i, x in enumerate(xs)]
    keeps = [np.empty((n + 7) // 8, dtype=np.uint8) for _ in xs]
    tasks = [(i, a) for i in range(len(xs)) for a in range(0, n, SPAN)]

    def span(i: int, start: int) -> tuple[list[float], list[float]]:
        rng = Uniform16(seeds[i], base.device, start)
        return _random_mask_np(xas[i], ba, keep_threshold(densities[i]), rng, rescale,
                               start, min(start + SPAN, n), keeps[i])

    sums = parallel_map(span, [i for i, _ in tasks], [a for _, a in tasks])
    out = []
    for i in range(len(xs)):
        mine = [sm for (j, _), sm in zip(tasks, sums, strict=True) if j == i]  # spans in order
        befores = [b for bs, _ in mine for b in bs]
        afters = [a for _, as_ in mine for a in as_]
        out.append((keeps[i], _factor(befores, afters, rescale)))
    return out


def _factor(befores: list[float], afters: list[float], rescale: bool) -> float:
    """The L1 rescale factor from the blocks' sums, each list added in order from 0.0 (as one
    pass over the whole tensor accumulates them); 1 without rescale."""
    if not rescale:
        return 1.0
    before = after = 0.0
    for b, a in zip(befores, afters, strict=True):
        before += b
        after += a
    return _ratio(before, after)


SPAN = 16 * SUM_BLOCK  # entries of one model per task of random_masks (a multiple of SUM_BLOCK)


def _random_mask_np(
    xa: np.ndarray | Float32Pieces, ba: np.ndarray | Float32Pieces, thr: int, rng: Uniform16, rescale: bool,
    first: int, last: int, keep: np.ndarray,
) -> tuple[list[float], list[float]]:
    """The mask of entries ``first:last`` into ``keep`` (packed); returns the blocks' L1 sums
    (before, after masking; empty without rescale) for the caller to add in order."""
    befores: list[float] = []
    afters: list[float] = []
    fused = rescale and 0 < thr < 1 << 16 and _kernels.active()
    for start in range(first, last, SUM_BLOCK):  # (a multiple of 8: each block packs into whole bytes)
        stop = min(start + SUM_BLOCK, last)
        if fused and stop - start == SUM_BLOCK:  # the whole block in one compiled pass
            leaves = scratch("dare-leaves", 2 * SUM_BLOCK // _kernels.LEAF, np.float64)
            bits = _bf16_bits(xa, ba, start, stop)  # bf16 read in the loop: no conversion pass
            before, after = _kernels.dare_block(
                *(bits or (xa[start:stop], ba[start:stop])), bits is not None,
                rng.draw_u16(SUM_BLOCK), thr, keep[start // 8 : stop // 8],
                leaves.reshape(2, -1))
            befores.append(before)
            afters.append(after)
            continue
        k = scratch("keep", stop - start, np.bool_)
        if thr >= 1 << 16:  # every uniform is below it; the stream is not needed
            k.fill(True)
        elif thr <= 0:
            k.fill(False)
        else:  # compare the uint16 draws directly: no widening, no torch bool kernel
            np.less(rng.draw_u16(stop - start), thr, out=k)
        keep[start // 8 : (stop + 7) // 8] = np.packbits(k, bitorder="little")
        if rescale:
            mags = np.subtract(
                xa[start:stop], ba[start:stop], out=scratch("mags", k.size, ba.dtype)
            )
            np.abs(mags, out=mags)
            befores.append(_l1_np(mags))
            np.multiply(mags, k, out=mags)
            afters.append(_l1_np(mags))
    return befores, afters


def _bf16_bits(xa, ba, start: int, stop: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Both pieces' bfloat16 bits, where both are bf16 pieces."""
    if isinstance(xa, Float32Pieces) and isinstance(ba, Float32Pieces):
        x, b = xa.bf16_bits(start, stop), ba.bf16_bits(start, stop)
        if x is not None and b is not None:
            return x, b
    return None


def l1_sum(mags: torch.Tensor) -> float:
    """The sum of a piece of magnitudes, in float64. On the CPU: numpy's pairwise sum of the
    piece converted to float64 (``_kernels.dare_block`` computes the same sum in its fused
    pass); no torch op, as these sums run on the merge's worker threads, where a torch
    reduction would start an OpenMP team per thread and slow every later small torch op of the
    process (see ``_pieces``)."""
    if mags.device.type != "cpu":
        return mags.sum(dtype=torch.float64).item()
    return _l1_np(mags.detach().reshape(-1).numpy())


def _l1_np(mags: np.ndarray) -> float:
    """``l1_sum`` of a flat numpy piece of magnitudes."""
    wide = scratch("l1-f64", mags.size, np.float64)
    np.copyto(wide, mags)
    return float(np.add.reduce(wide))


def _ratio(before: float, after: float) -> float:
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return 1.0
    return before / after


def l1_ratio_in_band(x: torch.Tensor, base: torch.Tensor, lo: float, hi: float) -> float:
    """Rescale factor when entries with lo <= |d| <= hi are kept."""
    before = after = 0.0
    if use_numpy(x, base) or use_half_pieces(x, base):
        xa, ba = flat_f32(x, "x"), flat_f32(base, "b")
        for start in range(0, ba.size, SUM_BLOCK):
            stop = min(start + SUM_BLOCK, ba.size)
            m = stop - start
            mags = np.subtract(xa[start:stop], ba[start:stop], out=scratch("mags", m, ba.dtype))
            np.abs(mags, out=mags)
            before += _l1_np(mags)
            band = np.greater_equal(mags, lo, out=scratch("ge", m, np.bool_))
            np.logical_and(band, np.less_equal(mags, hi, out=scratch("le", m, np.bool_)), out=band)
            np.multiply(mags, band, out=mags)  # the same values torch.where gives: mags >= 0
            after += _l1_np(mags)
        return _ratio(before, after)
    for _, d in delta_chunks(x, base):
        mags = d.abs_()
        before += l1_sum(mags)
        after += l1_sum(torch.where((mags >= lo) & (mags <= hi), mags, 0))
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
