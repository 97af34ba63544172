"""The task-arithmetic family's second pass on the CPU: rebuild each model's surviving,
weighted delta piece by piece, elect signs (TIES), combine and add the base, through numpy
or the compiled loop (``_kernels.combine``) on the merge's worker threads. The first pass,
which decides the survivors, is ``task_arithmetic``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from evomerge.merge import _kernels, sparsify
from evomerge.merge._pieces import OutputPieces, flat_f32, round_half, round_scalar
from evomerge.merge._util import mark_finite, new_output
from evomerge.merge.registry import TensorGroup


@dataclass
class Survivors:
    """Which entries of one model's delta survive, and the factor they are multiplied by."""

    factor: float
    lo: float = 0.0  # keep lo <= |delta| <= hi ...
    hi: float = math.inf
    mask: np.ndarray | torch.Tensor | None = None  # ... or where this mask is true (sparsify.mask_piece) ...
    dense: torch.Tensor | None = None  # ... or this precomputed sparse delta (DELLA)

    @property
    def keeps_all(self) -> bool:
        return self.mask is None and self.dense is None and self.lo <= 0 and self.hi == math.inf


def combine_cpu(
    group: TensorGroup,
    survivors: list[Survivors],
    weight: list[float],
    consensus: bool,
    normalize: bool,
    lambda_: float,
    rounding: torch.dtype | None = None,
) -> torch.Tensor:
    """Pass 2 of ``merge_task_vectors`` on the CPU through numpy or the compiled loop, bit-identical
    to the torch loop on float32/64. bf16/fp16 with ``rounding`` (``_pieces.half_rounding``):
    mergekit's arithmetic in that dtype, step by step (the delta, each weighted delta, the sums,
    the quotient, the lambda product, the result each rounded; weights are a tensor of that
    dtype); without: the float32 result of the upcast inputs, rounded once.

    Masks are bool comparisons (x * True == x and x * False == +-0, as the float masks
    give). Products with a Python scalar round it to the tensor's dtype, as torch does.
    """
    base = group.base
    ba = flat_f32(base, "b")
    xs = [flat_f32(t, f"x{i}") for i, t in enumerate(group.tensors)]
    masks = [s.mask for s in survivors]  # bit-packed
    dense = [None if s.dense is None else flat_f32(s.dense, f"d{i}") for i, s in enumerate(survivors)]
    out = new_output(base.shape, base.dtype, base.device)
    oa = OutputPieces(out)
    ft = ba.dtype.type
    it = np.int32 if ba.dtype == np.float32 else np.int64  # same-width integer view of a float
    sign_bit = it(np.iinfo(it).min)
    rnd = rounding
    # mergekit's weights are a tensor of the merge's dtype (and so, in half, rounded to it)
    weight = [round_scalar(w, rnd) for w in weight]
    factors = [round_scalar(s.factor, rnd) for s in survivors]
    total_weight = round_scalar(sum(weight), rnd)
    divide_by = 1.0 if abs(total_weight) < 1e-8 else total_weight
    n = ba.size

    def chunk(start: int, stop: int) -> None:
        m = stop - start
        b = ba[start:stop]
        scratch = sparsify.scratch
        ts = []
        for i, s in enumerate(survivors):
            t = scratch(f"t{i}", m, ba.dtype)
            if dense[i] is not None:
                np.multiply(dense[i][start:stop], ft(s.factor), out=t)  # (no torch op here: _pieces)
            else:
                round_half(np.subtract(xs[i][start:stop], b, out=t), rnd)
                if masks[i] is not None:
                    np.multiply(t, sparsify.unpack_piece(masks[i], start, stop), out=t)
                elif not s.keeps_all:
                    mags = np.abs(t, out=scratch("mags", m, ba.dtype))
                    band = np.greater_equal(mags, s.lo, out=scratch("ge", m, np.bool_))
                    if s.hi != math.inf:
                        le = np.less_equal(mags, s.hi, out=scratch("le", m, np.bool_))
                        np.logical_and(band, le, out=band)
                    np.multiply(t, band, out=t)
                if s.factor != 1:  # x * 1.0 is x; torch also rounds the factor to the dtype first
                    round_half(np.multiply(t, ft(factors[i]), out=t), rnd)
            ts.append(t)
        mixed = scratch("mixed", m, ba.dtype)
        if len(ts) == 1:
            np.copyto(mixed, ts[0])
        else:  # the same left-to-right sum as copying the first and adding the others
            np.add(ts[0], ts[1], out=mixed)
            for t in ts[2:]:
                np.add(mixed, t, out=mixed)
        if consensus:
            # The elected sign is + where the sum is >= 0: a delta agrees when it is nonzero and
            # its sign bit equals the sum's, i.e. when (its bits XOR the sum's sign bit) > 0 as a
            # signed integer (copysign, a multiply and a compare did this at 5x the cost). This
            # differs from the torch loop only at a sum of -0, which needs every delta to be +-0,
            # and those never agree anyway.
            sign = np.bitwise_and(mixed.view(it), sign_bit, out=scratch("sign", m, it))
            divisor = scratch("divisor", m, ba.dtype) if normalize else None
            for i, t in enumerate(ts):
                flipped = np.bitwise_xor(t.view(it), sign, out=scratch("flip", m, it))
                a = np.greater(flipped, 0, out=scratch("agree", m, np.bool_))
                np.multiply(t, a, out=t)
                if i == 0:
                    np.add(t, ft(0), out=mixed)  # 0 + t: the torch loop's sum starts from +0
                else:
                    np.add(mixed, t, out=mixed)
                if divisor is None:  # the divisor only divides: without normalize it is unused
                    continue
                if i == 0:
                    np.multiply(a, ft(weight[i]), out=divisor)
                else:
                    np.add(divisor, np.multiply(a, ft(weight[i]), out=t), out=divisor)
            round_half(mixed, rnd)  # sums over the models are accumulated in float32, rounded once
            if divisor is not None:
                round_half(divisor, rnd)
                empty = np.equal(divisor, 0, out=scratch("ge", m, np.bool_))
                np.add(divisor, empty, out=divisor)  # an empty divisor becomes 1
                round_half(np.divide(mixed, divisor, out=mixed), rnd)
        else:
            round_half(mixed, rnd)
            if normalize:  # (numpy: no torch op on a worker thread, _pieces; torch also divides
                # by the dtype's scalar)
                round_half(np.divide(mixed, ft(divide_by), out=mixed), rnd)
        if lambda_ != 1:
            round_half(np.multiply(mixed, ft(lambda_), out=mixed), rnd)  # (a float32 scalar, as torch)
        dst = oa.piece(start, stop)
        np.add(b, mixed, out=dst)
        oa.put(dst, start, stop)

    def run_chunks(first: int, last: int) -> None:  # (finiteness is checked by the engine)
        for start in range(first, last, sparsify.CHUNK):
            chunk(start, min(start + sparsify.CHUNK, last))

    run = run_chunks
    bits = None
    bits = _bf16_views(base, group.tensors, out)  # bf16 read and written in the loop
    if (_kernels.active() and (rnd is None or rnd == torch.bfloat16 and bits is not None)
            and lambda_ == 1 and (consensus or not normalize) and all(d is None for d in dense)):
        # The common case (TIES, DARE, breadcrumbs, task arithmetic) in one fused pass.
        modes = np.array([_kernels.MASK if m is not None else
                          _kernels.KEEP_ALL if s.keeps_all else _kernels.BAND
                          for s, m in zip(survivors, masks, strict=True)], dtype=np.int8)
        lo = np.array([s.lo for s in survivors], dtype=ba.dtype)  # (rounded already, with rnd)
        hi = np.array([s.hi for s in survivors], dtype=ba.dtype)
        factor = np.array(factors, dtype=ba.dtype)
        weights = np.array(weight, dtype=ba.dtype)  # (rounded above, with rnd)
        none = np.zeros(0, dtype=np.uint8)
        masks_ = tuple(none if m is None else m for m in masks)

        def run_compiled(first: int, last: int) -> bool:  # whether every output is finite
            sl = slice(first, last)
            scratch, block = sparsify.scratch, _kernels.BLOCK
            d = scratch("fused-d", len(xs) * block, ba.dtype).reshape(len(xs), block)
            mixed = scratch("fused-mixed", block, ba.dtype)
            conv = scratch("fused-conv", (len(xs) + 2) * block, ba.dtype).reshape(len(xs) + 2, block)
            if bits is not None:
                b_in, x_in, dst = bits[0][sl], tuple(x[sl] for x in bits[1]), bits[2][sl]
            else:
                b_in, x_in, dst = ba[sl], tuple(x[sl] for x in xs), oa.piece(first, last)
            total = scratch("fused-total", block, ba.dtype)
            divisor = scratch("fused-divisor", block, ba.dtype)
            finite = _kernels.combine(b_in, x_in, bits is not None, rnd is not None, modes, lo, hi,
                                      tuple(m if m.size == 0 else m[first // 8:(last + 7) // 8] for m in masks_),
                                      factor, weights, consensus, normalize, dst,
                                      d, d.view(it), mixed, mixed.view(it), total, total.view(it),
                                      divisor, divisor.view(it),
                                      conv, conv.view(np.uint32 if ba.dtype == np.float32 else np.uint64))
            if bits is None:
                oa.put(dst, first, last)
            return finite

        run = run_compiled
    # Chunk-aligned pieces, several per worker: a descheduled worker holds up one piece only.
    starts = range(0, n, sparsify.PIECE)
    finite = sparsify.parallel_map(run, starts, [min(a + sparsify.PIECE, n) for a in starts])
    if (oa.direct or run is not run_chunks and bits is not None) and all(f is True for f in finite):
        # (the numpy path checks float32 values, and a finite one may round to inf in fp16)
        mark_finite(out)
    return out


def _bf16_views(base: torch.Tensor, xs: list[torch.Tensor], out: torch.Tensor):
    """(base, inputs, output) as flat uint16 views of their bfloat16 bits, where all are bf16
    CPU tensors (the compiled loop reads and rounds them itself); else None."""
    if not all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in (base, *xs, out)):
        return None

    def view(t: torch.Tensor) -> np.ndarray:
        return t.detach().reshape(-1).view(torch.int16).numpy().view(np.uint16)

    return view(base), [view(x) for x in xs], view(out)
