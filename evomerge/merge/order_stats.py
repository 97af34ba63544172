"""Exact order statistics of |x - base| without sorting (the magnitude thresholds of TIES and
Model Breadcrumbs).

A small stratified sample brackets each target rank, one counting pass finds how many entries
lie below the bracket and how many sit at its low edge, and only the entries inside it are
selected among. On the CPU the counting pass runs in (model, piece) tasks on the merge's worker
threads through the compiled loop (``_kernels.count_windows``) or numpy; bf16 / fp16 tensors are
read in float32 pieces (``_pieces``).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict

import numpy as np
import torch

from evomerge.merge import _kernels, sparsify
from evomerge.merge._pieces import flat_f32
from evomerge.merge._scratch import CHUNK, scratch
from evomerge.merge.sparsify import PIECE, delta_chunks, parallel_map

_SAMPLE = 1 << 15


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
    if sparsify.use_numpy(x, base):  # (looked up here: tests force the torch path through it)
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
