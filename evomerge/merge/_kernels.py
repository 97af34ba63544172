"""Fused CPU loops of the task-vector family, compiled with numba.

numpy runs a TIES merge as some twenty passes over each piece (subtract, abs, compare,
mask, sum, sign, ...), each one a call and a trip through memory; these loops do the same
arithmetic in one or two passes over cache-sized blocks. They are the hot path of every
TIES/DARE candidate a search merges in memory, and of ``evomerge merge``.

Bit-identical to the numpy path (and so to the torch path and mergekit): the same IEEE
operations in the same order, in the tensors' own dtype (scalars come in as arrays of that
dtype, so nothing widens to float64), no fast-math and so no fused multiply-add.
``error_model="numpy"``: a division by zero gives inf as numpy's does, with no check per
element (that check stopped the division loop from vectorising). ``nogil``: the merge's
worker threads run them side by side, each on its own piece.

numba is imported and a loop compiled (or loaded from numba's on-disk cache) on its first
call, not on import: a command that merges nothing of this family does not pay for it,
and a one-off merge of a small model (``use_fused``) skips them. ``EVOMERGE_FUSED=0``
turns them off; the numpy path is the reference they match.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from contextvars import ContextVar

import numpy as np

from evomerge.merge._util import _using

ENABLED = (
    importlib.util.find_spec("numba") is not None and os.environ.get("EVOMERGE_FUSED", "1") != "0"
)
# Loading numba and its compiled loops costs a process about a second (more on a busy
# machine); they save about that much per GB of TIES input. A search merges many
# candidates and always gains; a one-off merge gains from about this much input on.
ONE_OFF_MIN_BYTES = 2 << 30
_wanted: ContextVar[bool] = ContextVar("evomerge_fused", default=True)


def active() -> bool:
    """Whether the merges running in this context use the compiled loops."""
    return ENABLED and _wanted.get()


def use_fused(flag: bool) -> contextlib.AbstractContextManager[None]:
    """Within the block, merges in this context use the compiled loops only if ``flag``."""
    return _using(_wanted, flag)


class _Compiled:
    """A function compiled with numba on its first call."""

    _lock = threading.Lock()

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self._compiled = None

    def __call__(self, *args):
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    from numba import njit

                    _compile_helpers()
                    self._compiled = njit(nogil=True, cache=True, error_model="numpy")(self.fn)
        return self._compiled(*args)


def njit(fn):
    return _Compiled(fn)


# How each model's delta is kept (``modes``): all of it, a band of magnitudes, a bool mask.
KEEP_ALL, BAND, MASK = 0, 1, 2
BLOCK = 2048  # elements per inner loop: a block's buffers stay in L1


@njit
def count_windows(xs, b, lo, hi, inside, below, at_lo, count):  # pragma: no cover - compiled
    """Per model i and window j: how many |xs[i] - b| lie below lo[i, j] (into below[i, j]),
    how many equal it (at_lo[i, j]), and those in (lo[i, j], hi[i, j]], copied in order to
    ``inside[i * windows + j]`` (their number into count[i, j]). A NaN counts as below (as
    ``not (m >= lo)`` does in numpy). Entries tied at lo are counted, not copied: a delta that
    is mostly exact zeros (a bf16 fine-tune's) puts most of the tensor at lo = 0, and copying
    and selecting among them cost more than the rest of the merge.

    Branch-free, a store per entry: with random magnitudes a branch on the window is
    mispredicted half the time. (Measured slower: the models blocked over the base to read
    it once, and a counting loop followed by a branchy copy of the few inside.)"""
    n = b.shape[0]
    w = lo.shape[1]
    for i in range(len(xs)):
        x = xs[i]
        for j in range(w):
            lo_j, hi_j = lo[i, j], hi[i, j]
            out = inside[i * w + j]
            c = 0
            n_ge = 0
            n_gt = 0
            for k in range(n):
                v = abs(x[k] - b[k])
                ge = v >= lo_j
                gt = v > lo_j
                n_ge += ge
                n_gt += gt
                out[c] = v
                c += gt & (v <= hi_j)
            below[i, j] = n - n_ge
            at_lo[i, j] = n_ge - n_gt
            count[i, j] = c


def _compile_helpers() -> None:
    """Compile the helpers the loops call (a loop sees them as module globals when compiled)."""
    global _bf16_of, _round_bf16
    if not hasattr(_round_bf16, "py_func"):
        from numba import njit

        _bf16_of = njit(inline="always", nogil=True, cache=True)(_bf16_of)
        _round_bf16 = njit(inline="always", nogil=True, cache=True)(_round_bf16)


def _bf16_of(u):  # pragma: no cover - compiled (inlined into the loops below)
    """The bfloat16 bits of the float32 whose bits are ``u``, as torch rounds (to nearest, ties
    to even; NaN to 0x7FC0), as ``_pieces.round_to_bf16`` does in numpy."""
    u = np.uint32(u)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(0x7FC0)
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def _round_bf16(bits, m):  # pragma: no cover - compiled (inlined into the loops below)
    """The first ``m`` float32 values behind integer view ``bits`` rounded in place to bfloat16's
    values (``_pieces.round_half``)."""
    for k in range(m):
        bits[k] = np.uint32(_bf16_of(bits[k])) << np.uint32(16)


@njit
def combine(b, xs, bf16, rounding, modes, lo, hi, masks, factor, weight, consensus, normalize, out,
            d, d_bits, mixed, mixed_bits, total, total_bits, divisor, divisor_bits, conv,
            conv_bits):  # pragma: no cover - compiled
    """``merge_task_vectors``' second pass over one piece: rebuild each kept, weighted delta,
    sum them (TIES: keep those agreeing with the sum's sign, divide by their weights), add
    the base. ``b``, ``xs`` and ``out``: float32, or with ``bf16`` bfloat16 bits as uint16 (read
    as float32 a block at a time, exactly; the result rounded to nearest, ties to even, as
    torch converts; a NaN as 0x7FC0), so that no conversion pass over the tensors is made.
    ``rounding`` (with ``bf16``): mergekit's arithmetic in bf16, each step rounded where the
    numpy path rounds it (``combine_cpu``: the delta, the weighted delta, the sums, the
    quotient); ``factor``, ``weight``, ``lo``, ``hi`` then hold bf16 values.
    (float64 works as float32 does.) ``masks``: bit-packed (``numpy.packbits``, little bit
    order) for MASK models. ``factor``/``weight``/``lo``/``hi``: per model, in the working
    dtype (``factor[i] == 1`` multiplies by one, which changes nothing). ``d`` (models x
    BLOCK), ``mixed`` and ``total``, ``divisor`` (BLOCK) are scratch in the working dtype,
    ``d_bits`` and ``mixed_bits`` their same-width integer views; ``conv`` ((models + 2) x
    BLOCK) scratch for the block's inputs and output, ``conv_bits`` its unsigned integer view.
    Returns whether every output value is finite.

    Each inner loop runs over a block of elements with selects, not branches, so that it
    vectorises; the loop over models is outside (indexing a tuple is a switch)."""
    n_models = len(xs)
    n = b.shape[0]
    zero = np.zeros(1, dtype=conv.dtype)[0]  # typed: float32 arithmetic stays float32
    one = np.ones(1, dtype=conv.dtype)[0]
    sign_bit = mixed_bits.dtype.type(1) << (8 * mixed_bits.itemsize - 1)
    finite = True
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        # The block's inputs in float32: row i model i, row n_models the base.
        for i in range(n_models + 1):
            src = b if i == n_models else xs[i]
            if bf16:
                row_bits = conv_bits[i]
                for k in range(m):
                    row_bits[k] = np.uint32(src[start + k]) << 16
            else:
                row = conv[i]
                for k in range(m):
                    row[k] = src[start + k]
        bb = conv[n_models]
        for i in range(n_models):
            x = conv[i]
            di = d[i]
            mode = modes[i]
            f = factor[i]
            for k in range(m):
                di[k] = x[k] - bb[k]
            if rounding:  # the delta is rounded before its magnitude is compared or weighted
                _round_bf16(d_bits[i], m)
            if mode == 1:
                lo_i, hi_i = lo[i], hi[i]
                for k in range(m):
                    t = di[k]
                    a = abs(t)
                    di[k] = t * (one if (a >= lo_i) & (a <= hi_i) else zero) * f
            elif mode == 2:  # the mask is bit-packed, little bit order, from this piece's start
                mask = masks[i]
                for k in range(m):
                    j = start + k
                    kept = (mask[j >> 3] >> (j & 7)) & 1
                    di[k] = di[k] * (one if kept else zero) * f
            else:
                for k in range(m):
                    di[k] = di[k] * f
            if rounding:
                _round_bf16(d_bits[i], m)
        for k in range(m):
            mixed[k] = d[0, k]
        for i in range(1, n_models):
            for k in range(m):
                mixed[k] = mixed[k] + d[i, k]
        if consensus:
            # A delta agrees when it is nonzero and its sign bit equals the sum's: its bits
            # XOR the sum's sign bit are > 0 as a signed integer (as the numpy path).
            for k in range(m):
                mixed_bits[k] = mixed_bits[k] & sign_bit
            w = weight[0]
            for k in range(m):  # the sum starts from +0, as the torch loop's does
                agrees = (d_bits[0, k] ^ mixed_bits[k]) > 0
                total[k] = d[0, k] * (one if agrees else zero) + zero
                divisor[k] = (one if agrees else zero) * w
            for i in range(1, n_models):
                w = weight[i]
                for k in range(m):
                    agrees = (d_bits[i, k] ^ mixed_bits[k]) > 0
                    total[k] = total[k] + d[i, k] * (one if agrees else zero)
                    divisor[k] = divisor[k] + (one if agrees else zero) * w
            if rounding:  # the sums accumulated in float32, rounded once
                _round_bf16(total_bits, m)
                _round_bf16(divisor_bits, m)
            if normalize:
                for k in range(m):
                    q = divisor[k]
                    mixed[k] = total[k] / (q + (one if q == 0 else zero))
            else:
                for k in range(m):
                    mixed[k] = total[k]
        if rounding:
            _round_bf16(mixed_bits, m)
        ok = True
        if bf16:
            res = conv[n_models + 1]
            res_bits = conv_bits[n_models + 1]
            for k in range(m):
                res[k] = bb[k] + mixed[k]
            for k in range(m):
                r = _bf16_of(res_bits[k])
                out[start + k] = r
                ok &= (r & np.uint16(0x7F80)) != np.uint16(0x7F80)
        else:
            for k in range(m):
                v = bb[k] + mixed[k]
                out[start + k] = v
                ok &= abs(v) < np.inf  # NaN fails every comparison
        finite &= ok
    return finite


LEAF = 128  # numpy's pairwise summation adds blocks of this many entries with eight accumulators


@njit
def dare_block(x, b, bf16, draws, thr, keep, leaves):  # pragma: no cover - compiled
    """DARE's mask pass over one block of ``2**k * LEAF`` entries: keep bit i (packed, little
    bit order, into ``keep``) where ``draws[i] < thr``, and the L1 sums of the float32 deltas
    ``|x - b|`` before and after masking, in float64, each exactly the sum numpy's
    ``np.add.reduce`` gives for those magnitudes as a float64 array (its pairwise summation:
    leaves of LEAF entries in eight interleaved accumulators combined as
    ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then halves added pairwise), which
    is how ``sparsify.l1_sum`` defines them. ``x``, ``b``: float32, or with ``bf16`` the bfloat16
    bits as uint16 (read as float32 a leaf at a time, exactly). ``leaves``: float64 scratch of
    2 x blocks/LEAF. One pass, where numpy makes eight (convert, subtract, abs, compare, pack,
    widen, sum, mask and sum again)."""
    n = x.shape[0]
    count = n // LEAF
    before = leaves[0]
    after = leaves[1]
    xbits = np.empty(LEAF, dtype=np.uint32)
    bbits = np.empty(LEAF, dtype=np.uint32)
    xl = xbits.view(np.float32)
    bl = bbits.view(np.float32)
    r = np.zeros(8, dtype=np.float64)
    s = np.zeros(8, dtype=np.float64)
    for leaf in range(count):
        o = leaf * LEAF
        if bf16:
            for i in range(LEAF):
                xbits[i] = np.uint32(x[o + i]) << 16
                bbits[i] = np.uint32(b[o + i]) << 16
        else:
            for i in range(LEAF):
                xl[i] = x[o + i]
                bl[i] = b[o + i]
        for j in range(LEAF // 8):
            byte = 0
            for bit in range(8):
                byte |= np.uint8(draws[o + 8 * j + bit] < thr) << bit
            keep[(o >> 3) + j] = byte
        r[:] = 0.0
        s[:] = 0.0
        for i in range(0, LEAF, 8):
            for lane in range(8):
                m = np.float64(abs(xl[i + lane] - bl[i + lane]))
                r[lane] += m
                s[lane] += m if draws[o + i + lane] < thr else 0.0
        before[leaf] = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        after[leaf] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    while count > 1:
        count //= 2
        for k in range(count):
            before[k] = before[2 * k] + before[2 * k + 1]
            after[k] = after[2 * k] + after[2 * k + 1]
    return before[0], after[0]
