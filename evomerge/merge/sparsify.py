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
stratified sample brackets the target rank, one counting pass finds how many entries lie
above the bracket, and only the entries inside it are selected among. Entries
tied exactly at the threshold are all kept (for real weights that happens only
for zeros, which change nothing). Random masks draw 16-bit uniforms (the kept
probability is density rounded to 1/65536) from a stream seeded per tensor
and model, so the same seed gives the same bytes however the work is chunked.

On the CPU, float32/float64 work goes through numpy views of the tensors: its
comparisons and bool masks are several times faster than torch's there, and
every operation used is exact IEEE arithmetic, so results are bit-identical to
the torch path (kept for other devices and dtypes). Sums stay in torch, whose
reduction order defines the rescale factors.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from evomerge.merge import _kernels
from evomerge.merge._pieces import Float32Pieces, flat_f32, use_half_pieces
from evomerge.merge._scratch import CHUNK, scratch

PIECE = 8 * CHUNK  # elements per task on the worker threads: many tasks balance the workers
# Rescale factors are sums of |delta| in float64, one torch sum per block of this many entries
# and the blocks' sums added in order: the block size is part of the result, so it stays fixed.
SUM_BLOCK = 1 << 19
_SAMPLE = 1 << 15
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


# -- exact order statistics of |x - base| -------------------------------------------------


def _select(values: torch.Tensor | np.ndarray, ranks: list[int]) -> list[float]:
    """Values at 1-based ascending ``ranks`` of a flat tensor (numpy's introselect is fast)."""
    if isinstance(values, np.ndarray):
        arr = values.astype(np.float32, copy=False)  # as the torch path: thresholds are float32
    else:
        arr = values.detach().float().cpu().numpy()
    kth = sorted({r - 1 for r in ranks})
    part = np.partition(arr, kth)
    return [float(part[r - 1]) for r in ranks]


def magnitude_order_stats(x: torch.Tensor, base: torch.Tensor, ranks: list[int]) -> list[float]:
    """Values of |x - base| at 1-based ascending ``ranks`` (1 = smallest)."""
    if use_numpy(x, base):
        return magnitude_order_stats_np([x], base, [ranks])[0]
    n = base.numel()
    xf, bf = x.reshape(-1), base.reshape(-1)
    if n <= 4 * _SAMPLE:
        return _select((xf - bf).abs(), ranks)
    idx = _sample_indices(n).to(base.device)
    windows = _windows((xf[idx] - bf[idx]).abs(), ranks, n)
    below, at_lo, inside = _count_windows(x, base, windows)
    return _finish(ranks, windows, below, at_lo, inside, lambda: (xf - bf).abs())


def magnitude_order_stats_np(
    xs: list[torch.Tensor], base: torch.Tensor, ranks: list[list[int]]
) -> list[list[float]]:
    """``magnitude_order_stats`` of several models' deltas from one base (CPU float32/64, or
    bf16/fp16 read in float32 pieces).

    The counting pass runs as (model, range) pieces on the worker threads: many small
    pieces, so a worker that the OS deschedules (the cores are often shared) holds up
    only its piece, not half the tensor.
    """
    n = base.numel()
    ba = flat_f32(base, "b")
    xas = [flat_f32(x, f"x{i}") for i, x in enumerate(xs)]
    if not xs:
        return []
    if n <= 4 * _SAMPLE:
        return parallel_map(lambda xa, r: _select(np.abs(np.asarray(xa) - np.asarray(ba)), r), xas, ranks)
    ia = _sample_indices(n).numpy()
    windows = parallel_map(lambda xa, r: _kept_sample_windows(xa, ba, ia, r), xas, ranks)
    if _kernels.active() and len({len(r) for r in ranks}) == 1:
        starts = range(0, n, PIECE)
        counted = parallel_map(
            lambda a: _count_windows_fused([x[a : a + PIECE] for x in xas], ba[a : a + PIECE], windows),
            starts,
        )
        per_model = [[c[i] for c in counted] for i in range(len(xs))]
    else:
        jobs = [(i, a, min(a + PIECE, n)) for i in range(len(xs)) for a in range(0, n, PIECE)]
        counted = parallel_map(
            lambda i, a, b: _count_windows_np(xas[i][a:b], ba[a:b], windows[i]),
            *zip(*jobs, strict=True),
        )
        per_model = [[c for (j, _, _), c in zip(jobs, counted, strict=True) if j == i]
                     for i in range(len(xs))]
    out = []
    for xa, r, win, mine in zip(xas, ranks, windows, per_model, strict=True):
        below = [sum(c[0][w] for c in mine) for w in range(len(r))]
        at_lo = [sum(c[1][w] for c in mine) for w in range(len(r))]
        inside = [np.concatenate([c[2][w] for c in mine]) for w in range(len(r))]
        out.append(_finish(r, win, below, at_lo, inside,
                           lambda xa=xa: np.abs(np.asarray(xa) - np.asarray(ba))))
    return out


@functools.lru_cache(maxsize=32)  # 256 KB each; a model has a few tensor sizes. Read only.
def _sample_indices(n: int) -> torch.Tensor:
    """A stratified sample: one random entry from each of _SAMPLE equal strides.

    It brackets at least as tightly as an i.i.d. sample (its counts vary less), its indices
    come sorted (pages touched in order, no sort), and it costs a fraction of drawing and
    sorting _SAMPLE indices, which with many small tensors was a large part of the selection.
    """
    gen = torch.Generator(device="cpu").manual_seed(n)
    stride = n // _SAMPLE
    offsets = torch.randint(0, stride, (_SAMPLE,), generator=gen)
    return offsets.add_(torch.arange(0, _SAMPLE * stride, stride))


def _window_positions(ranks: list[int], n: int) -> list[int]:
    """Per rank, two 1-based positions in the sorted sample that hold it between them with
    overwhelming probability."""
    positions = []
    for r in ranks:
        pos = (r - 0.5) / n * _SAMPLE
        margin = 6 * math.sqrt(_SAMPLE * (r / n) * (1 - r / n)) + 8
        positions += [max(int(pos - margin), 0) + 1, min(int(pos + margin), _SAMPLE - 1) + 1]
    return positions


def _windows(sample, ranks: list[int], n: int, *, is_sorted: bool = False) -> list[tuple[float, float]]:
    """Per rank, a range of values that holds it with overwhelming probability (``is_sorted``:
    ``sample`` is sorted float32, so the bounds are looked up, not selected)."""
    positions = _window_positions(ranks, n)
    bounds = [float(sample[p - 1]) for p in positions] if is_sorted else _select(sample, positions)
    return [(bounds[2 * j], bounds[2 * j + 1]) for j in range(len(ranks))]


# A search merges the same sources candidate after candidate, with new densities: each
# delta's sample is kept (sorted once it is seen a second time) so that its windows are
# looked up, not gathered (a cache miss per sampled entry) and selected again. Found by a
# fingerprint of its values, not by address: memory is reused, values differ. A wrong
# window would only cost time (``_finish`` checks and falls back), never a wrong value.
_kept_samples: OrderedDict = OrderedDict()
_kept_lock = threading.Lock()
_KEPT_SAMPLES = 512  # 128 KB each: at most 64 MB


def _kept_sample_windows(
    xa: np.ndarray, ba: np.ndarray, ia: np.ndarray, ranks: list[int]
) -> list[tuple[float, float]]:
    n = ba.size
    probe = ia[:: max(1, ia.size // 64)]
    key = (n, xa.dtype.str, xa[probe].tobytes(), ba[probe].tobytes())
    with _kept_lock:
        entry = _kept_samples.get(key)
        if entry is not None:
            _kept_samples.move_to_end(key)
    if entry is not None and entry[1]:
        return _windows(entry[0], ranks, n, is_sorted=True)
    if entry is None:  # first visit: gathered, kept as it is
        sample, is_sorted = np.abs(xa[ia] - ba[ia]), False
    else:  # second: sorted once (in float32, as _select compares), looked up from now on
        sample, is_sorted = np.sort(entry[0].astype(np.float32, copy=False)), True
    with _kept_lock:
        _kept_samples[key] = (sample, is_sorted)
        while len(_kept_samples) > _KEPT_SAMPLES:
            _kept_samples.popitem(last=False)
    return _windows(sample, ranks, n, is_sorted=is_sorted)


def _finish(ranks: list[int], windows: list[tuple[float, float]], below: list[int], at_lo: list[int],
            inside: list, everything) -> list[float]:
    """Per rank: lo if it falls among the entries tied at the window's low edge, else the entry of
    that rank among those inside (above lo), else (the sample missed it) a selection over all."""
    out = []
    for j, r in enumerate(ranks):
        cand, tied = inside[j], below[j] + at_lo[j]
        if below[j] < r <= tied:  # lo is a sampled magnitude: a value of the tensor's dtype
            out.append(windows[j][0])
        elif tied < r <= tied + len(cand):
            out.append(_select(cand, [r - tied])[0])
        else:  # the sample missed the rank (vanishingly rare): select over everything
            out.append(_select(everything(), [r])[0])
    return out


def _count_windows(
    x: torch.Tensor, base: torch.Tensor, windows: list[tuple[float, float]]
) -> tuple[list[int], list[int], list[torch.Tensor]]:
    """Per window: how many magnitudes lie below it, how many equal its low edge, and those
    inside it above that edge (ties at the edge are counted, not kept: _kernels.count_windows)."""
    below, at_lo = [0] * len(windows), [0] * len(windows)
    inside: list[list[torch.Tensor]] = [[] for _ in windows]
    for _, d in delta_chunks(x, base):
        mags = d.abs_()
        for j, (lo, hi) in enumerate(windows):
            n_ge = int(torch.count_nonzero(mags >= lo))
            above = mags > lo
            below[j] += mags.numel() - n_ge
            at_lo[j] += n_ge - int(torch.count_nonzero(above))
            above.logical_and_(mags <= hi)
            inside[j].append(mags[above])
    return below, at_lo, [torch.cat(c) for c in inside]


def _count_windows_np(
    xa: np.ndarray, ba: np.ndarray, windows: list[tuple[float, float]]
) -> tuple[list[int], list[int], list[np.ndarray]]:
    below, at_lo = [0] * len(windows), [0] * len(windows)
    inside: list[list[np.ndarray]] = [[] for _ in windows]
    n = ba.size
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        m = stop - start
        mags = np.subtract(xa[start:stop], ba[start:stop], out=scratch("mags", m, ba.dtype))
        np.abs(mags, out=mags)
        ge = scratch("ge", m, np.bool_)
        le = scratch("le", m, np.bool_)
        for j, (lo, hi) in enumerate(windows):
            np.greater_equal(mags, lo, out=ge)
            n_ge = int(np.count_nonzero(ge))
            np.greater(mags, lo, out=ge)
            n_gt = int(np.count_nonzero(ge))
            below[j] += m - n_ge
            at_lo[j] += n_ge - n_gt
            np.less_equal(mags, hi, out=le)
            np.logical_and(ge, le, out=ge)
            inside[j].append(np.compress(ge, mags))  # faster than mags[ge]
    return below, at_lo, [np.concatenate(c) for c in inside]


def _count_windows_fused(
    xas: list[np.ndarray], ba: np.ndarray, windows: list[list[tuple[float, float]]]
) -> list[tuple[list[int], list[int], list[np.ndarray]]]:
    """``_count_windows_np`` of several models (the same number of windows each), one pass."""
    k, w = len(xas), len(windows[0])
    lo = np.array([[v[0] for v in ws] for ws in windows], dtype=ba.dtype)
    hi = np.array([[v[1] for v in ws] for ws in windows], dtype=ba.dtype)
    inside = scratch("inside", k * w * ba.size, ba.dtype).reshape(k * w, ba.size)
    below = np.zeros((k, w), dtype=np.int64)
    at_lo = np.zeros((k, w), dtype=np.int64)
    count = np.zeros((k, w), dtype=np.int64)
    _kernels.count_windows(tuple(xas), ba, lo, hi, inside, below, at_lo, count)
    return [([int(v) for v in below[i]], [int(v) for v in at_lo[i]],
             [inside[i * w + j, : count[i, j]].copy() for j in range(w)]) for i in range(k)]


# -- random keep masks ----------------------------------------------------------------------


class Uniform16:
    """Deterministic 16-bit uniforms for one (tensor, model) stream, on the tensor's device.

    On the CPU the stream is ``numpy.random.Generator(PCG64(seed)).integers(0, 65536,
    count, dtype=uint16)``, produced here from the raw 64-bit words (several times
    faster): each word is two 32-bit halves, low first, each two 16-bit halves, low
    first; a call ending on an odd 32-bit half keeps the word's other half for the
    next call and drops the unused 16 bits, as ``integers`` does.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        if device.type == "cpu":
            self._bits = np.random.PCG64(seed)
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
    if use_numpy(x, base) or use_half_pieces(x, base):
        return _random_mask_np(flat_f32(x, "x"), flat_f32(base, "b"), thr, rng, rescale)
    cpu = base.device.type == "cpu"
    n = base.numel()
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


def _random_mask_np(
    xa: np.ndarray | Float32Pieces, ba: np.ndarray | Float32Pieces, thr: int, rng: Uniform16, rescale: bool
) -> tuple[np.ndarray, float]:
    n = ba.size
    keep = np.empty((n + 7) // 8, dtype=np.uint8)
    before = after = 0.0
    for start in range(0, n, SUM_BLOCK):  # (a multiple of 8: each block packs into whole bytes)
        stop = min(start + SUM_BLOCK, n)
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
            t = torch.from_numpy(mags)
            before += l1_sum(t)
            np.multiply(mags, k, out=mags)
            after += l1_sum(t)
    return keep, _ratio(before, after) if rescale else 1.0


_SERIAL = 1 << 15  # torch's grain size: an op on fewer entries runs on the calling thread


def l1_sum(mags: torch.Tensor) -> float:
    """The sum of a piece of magnitudes, in float64. On the CPU in blocks of ``_SERIAL`` added in
    order: these sums run on the merge's worker threads, where a larger torch reduction would
    start an OpenMP team per thread and slow every later small torch op of the process (see
    ``_pieces``); the blocks make the sum the same on every path."""
    if mags.device.type != "cpu":
        return mags.sum(dtype=torch.float64).item()
    return sum(mags[i : i + _SERIAL].sum(dtype=torch.float64).item() for i in range(0, mags.numel(), _SERIAL))


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
            t = torch.from_numpy(mags)
            before += l1_sum(t)
            band = np.greater_equal(mags, lo, out=scratch("ge", m, np.bool_))
            np.logical_and(band, np.less_equal(mags, hi, out=scratch("le", m, np.bool_)), out=band)
            np.multiply(mags, band, out=mags)  # the same values torch.where gives: mags >= 0
            after += l1_sum(t)
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
