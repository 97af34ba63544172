"""The task-arithmetic family: one implementation, eight registered variants.

Every variant takes task vectors (model minus base), optionally sparsifies each
one, weights them, optionally keeps only the entries that agree with the
elected sign (TIES' consensus, elected from the *weighted* deltas), sums them,
optionally divides by the sum of the weights that contributed, scales by
``lambda`` and adds the result to the base.

=================  ====================  =========  =========  =======
method             sparsification        consensus  normalize  rescale
=================  ====================  =========  =========  =======
task_arithmetic    none                  no         no         no
ties               magnitude             sum        yes        no
dare_ties          random                sum        no         yes
dare_linear        random                no         no         yes
breadcrumbs        magnitude_outliers    no         no         no
breadcrumbs_ties   magnitude_outliers    sum        no         no
della              della_magprune        sum        yes        yes
della_linear       della_magprune        no         no         yes
=================  ====================  =========  =========  =======
(``normalize`` and ``rescale`` are defaults the recipe may override.)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from evomerge.merge import _kernels, order_stats, sparsify
from evomerge.merge._pieces import OutputPieces, flat_f32, use_half_pieces
from evomerge.merge._util import mark_finite, new_output
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


@dataclass
class _Survivors:
    """Which entries of one model's delta survive, and the factor they are multiplied by."""

    factor: float
    lo: float = 0.0  # keep lo <= |delta| <= hi ...
    hi: float = math.inf
    mask: np.ndarray | torch.Tensor | None = None  # ... or where this mask is true (sparsify.mask_piece) ...
    dense: torch.Tensor | None = None  # ... or this precomputed sparse delta (DELLA)

    @property
    def keeps_all(self) -> bool:
        return self.mask is None and self.dense is None and self.lo <= 0 and self.hi == math.inf


def _band(mags: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """1.0 where lo <= mags <= hi, else 0.0 (mags is consumed)."""
    if hi == math.inf:
        return mags.sub_(lo).sign_().add_(1).clamp_(max=1)
    below_hi = torch.sub(hi, mags).sign_().add_(1).clamp_(max=1)
    return mags.sub_(lo).sign_().add_(1).clamp_(max=1).mul_(below_hi)


def _stream_seed(seed: int, tensor: str, model: int) -> int:
    digest = hashlib.sha256(f"{seed}:{tensor}:{model}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _survivors(
    group: TensorGroup,
    i: int,
    sparsification: str | None,
    weight: float,
    density: float,
    rescale: bool,
    gamma: float,
    epsilon: float,
    stats: list[float] | None = None,
) -> _Survivors:
    """``stats``: the band's order statistics, if already found (``_band_ranks``' ranks)."""
    x, base = group.tensors[i], group.base
    if sparsification is None or density >= 1:
        return _Survivors(weight)
    n = base.numel()
    if sparsification in ("random", "della_magprune"):
        rng = sparsify.Uniform16(_stream_seed(group.seed or 0, group.name, i), base.device)
        if sparsification == "random":
            mask, ratio = sparsify.random_mask(x, base, density, rng, rescale)
            return _Survivors(weight * ratio, mask=mask)
        return _Survivors(
            weight, dense=sparsify.della_magprune(x - base, density, rescale, epsilon, rng)
        )
    ranks = _band_ranks(n, sparsification, density, gamma)
    if ranks is None:
        return _Survivors(weight, lo=math.inf)
    bounds = stats if stats is not None else order_stats.magnitude_order_stats(x, base, ranks)
    return _band_survivors(x, base, bounds, weight, rescale)


def _band_ranks(n: int, sparsification: str, density: float, gamma: float) -> list[int] | None:
    """1-based ascending ranks of |delta| bounding what a magnitude sparsification keeps
    (the smallest kept, and for magnitude_outliers the largest kept); None: nothing kept."""
    if sparsification == "magnitude":
        k = max(1, int(density * n)) if density > 0 and n else 0
        return [n - k + 1] if k else None
    keep = int(density * n)
    if keep <= 0:
        return None
    n_bottom = max(0, n - keep - int(gamma * n))
    return [n_bottom + 1, n_bottom + keep]


def _band_survivors(
    x: torch.Tensor, base: torch.Tensor, bounds: list[float], weight: float, rescale: bool
) -> _Survivors:
    lo, hi = bounds[0], (bounds[1] if len(bounds) > 1 else math.inf)
    ratio = sparsify.l1_ratio_in_band(x, base, lo, hi) if rescale else 1.0
    return _Survivors(weight * ratio, lo=lo, hi=hi)


def merge_task_vectors(
    group: TensorGroup,
    *,
    sparsification: str | None,
    consensus: bool,
    weight: list[float],
    density: list[float],
    normalize: bool,
    rescale: bool,
    lambda_: float = 1.0,
    gamma: list[float] | None = None,
    epsilon: list[float] | None = None,
) -> torch.Tensor:
    base = group.base
    if not group.tensors:
        return base
    n_models = len(group.tensors)
    # float32/64 on the CPU, or bf16/fp16 read in float32 pieces (computed in float32, rounded once)
    fast = sparsify.use_numpy(base, *group.tensors) or use_half_pieces(base, *group.tensors)

    def survivors_of(i: int) -> _Survivors:
        return _survivors(
            group,
            i,
            sparsification,
            weight[i],
            density[i],
            rescale,
            gamma[i] if gamma else 0.0,
            epsilon[i] if epsilon else 0.0,
        )

    if fast and sparsification in ("magnitude", "magnitude_outliers"):
        # Every model's thresholds at once: the counting pass is shared out in small pieces.
        n = base.numel()
        ranks = {
            i: r
            for i in range(n_models)
            if density[i] < 1
            and (r := _band_ranks(n, sparsification, density[i], gamma[i] if gamma else 0.0))
        }
        found = order_stats.magnitude_order_stats_np(
            [group.tensors[i] for i in ranks], base, list(ranks.values())
        )
        stats = dict(zip(ranks, found, strict=True))
        survivors = sparsify.parallel_map(
            lambda i: _survivors(group, i, sparsification, weight[i], density[i], rescale,
                                 gamma[i] if gamma else 0.0, 0.0, stats.get(i)),
            range(n_models),
        )
        return _combine_np(group, survivors, weight, consensus, normalize, lambda_)
    if fast:  # one model per worker: each pass is independent and numpy releases the GIL
        survivors = sparsify.parallel_map(survivors_of, range(n_models))
        return _combine_np(group, survivors, weight, consensus, normalize, lambda_)
    survivors = [survivors_of(i) for i in range(n_models)]
    # Pass 2, piece by piece: rebuild each surviving, weighted delta; elect signs; combine.
    flat_base = base.reshape(-1)
    flat_x = [t.reshape(-1) for t in group.tensors]
    out = new_output(base.shape, base.dtype, base.device).view(-1)  # the resident tensor, if offered
    total_weight = sum(weight)
    step = sparsify.chunk_size(base)
    for start in range(0, flat_base.numel(), step):
        sl = slice(start, min(start + step, flat_base.numel()))
        b = flat_base[sl]
        deltas = []
        for x, s in zip(flat_x, survivors, strict=True):
            if s.dense is not None:
                d = s.dense.reshape(-1)[sl] * s.factor
            else:
                d = torch.sub(x[sl], b)
                if s.mask is not None:
                    d.mul_(sparsify.mask_piece(s.mask, sl.start, sl.stop))
                elif not s.keeps_all:
                    d.mul_(_band(d.abs(), s.lo, s.hi))
                d.mul_(s.factor)
            deltas.append(d)
        mixed = deltas[0].clone()
        for d in deltas[1:]:
            mixed.add_(d)
        if consensus:
            # TIES: keep only entries whose sign agrees with the sign of the weighted sum.
            # (sign(0) is 0, so entries that are exactly zero never count towards the divisor.)
            # Masks are built with float arithmetic: on CPU it is several times faster than
            # comparisons that produce bool tensors.
            elected = mixed.sign_().add_(0.5).sign_()  # +1 where the sum is >= 0, else -1
            mixed = torch.zeros_like(b)
            divisor = torch.zeros_like(b)
            for d, w in zip(deltas, weight, strict=True):
                agrees = torch.sign(d).mul_(elected).relu_()
                mixed.add_(d.mul_(agrees))
                divisor.add_(agrees, alpha=w)
            divisor.add_(torch.abs(divisor).sign_().neg_().add_(1))  # an empty divisor becomes 1
            if normalize:
                mixed.div_(divisor)
        elif normalize:
            mixed.div_(1.0 if abs(total_weight) < 1e-8 else total_weight)
        if lambda_ != 1:
            mixed.mul_(lambda_)
        torch.add(b, mixed, out=out[sl])
    return out.reshape(base.shape)


def _combine_np(
    group: TensorGroup,
    survivors: list[_Survivors],
    weight: list[float],
    consensus: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """Pass 2 of ``merge_task_vectors`` on the CPU through numpy, bit-identical to the torch loop.

    Masks are bool comparisons (x * True == x and x * False == +-0, as the float masks
    give). Products with a Python scalar round it to the tensor's dtype, as torch does.
    """
    base = group.base
    ba = flat_f32(base, "b")
    xs = [flat_f32(t, f"x{i}") for i, t in enumerate(group.tensors)]
    masks = [s.mask for s in survivors]  # bit-packed
    dense = [None if s.dense is None else s.dense.reshape(-1) for s in survivors]
    out = new_output(base.shape, base.dtype, base.device)
    oa = OutputPieces(out)
    ft = ba.dtype.type
    it = np.int32 if ba.dtype == np.float32 else np.int64  # same-width integer view of a float
    sign_bit = it(np.iinfo(it).min)
    total_weight = sum(weight)
    n = ba.size

    def chunk(start: int, stop: int) -> None:
        m = stop - start
        b = ba[start:stop]
        scratch = sparsify.scratch
        ts = []
        for i, s in enumerate(survivors):
            t = scratch(f"t{i}", m, ba.dtype)
            if dense[i] is not None:
                torch.mul(dense[i][start:stop], s.factor, out=torch.from_numpy(t))
            else:
                np.subtract(xs[i][start:stop], b, out=t)
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
                    np.multiply(t, ft(s.factor), out=t)
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
            if divisor is not None:
                empty = np.equal(divisor, 0, out=scratch("ge", m, np.bool_))
                np.add(divisor, empty, out=divisor)  # an empty divisor becomes 1
                np.divide(mixed, divisor, out=mixed)
        elif normalize:
            np.divide(mixed, ft(1.0 if abs(total_weight) < 1e-8 else total_weight), out=mixed)  # (numpy:
            # no torch op on a worker thread, _pieces; torch also divides by the dtype's scalar)
        if lambda_ != 1:
            np.multiply(mixed, ft(lambda_), out=mixed)
        dst = oa.piece(start, stop)
        np.add(b, mixed, out=dst)
        oa.put(dst, start, stop)

    def run_chunks(first: int, last: int) -> None:  # (finiteness is checked by the engine)
        for start in range(first, last, sparsify.CHUNK):
            chunk(start, min(start + sparsify.CHUNK, last))

    run = run_chunks
    if (_kernels.active() and lambda_ == 1 and (consensus or not normalize)
            and all(d is None for d in dense)):
        # The common case (TIES, DARE, breadcrumbs, task arithmetic) in one fused pass.
        modes = np.array([_kernels.MASK if m is not None else
                          _kernels.KEEP_ALL if s.keeps_all else _kernels.BAND
                          for s, m in zip(survivors, masks, strict=True)], dtype=np.int8)
        lo = np.array([s.lo for s in survivors], dtype=ba.dtype)
        hi = np.array([s.hi for s in survivors], dtype=ba.dtype)
        factor = np.array([s.factor for s in survivors], dtype=ba.dtype)
        weights = np.array(weight, dtype=ba.dtype)
        none = np.zeros(0, dtype=np.uint8)
        masks_ = tuple(none if m is None else m for m in masks)

        def run_compiled(first: int, last: int) -> bool:  # whether every output is finite
            sl = slice(first, last)
            scratch, block = sparsify.scratch, _kernels.BLOCK
            d = scratch("fused-d", len(xs) * block, ba.dtype).reshape(len(xs), block)
            mixed = scratch("fused-mixed", block, ba.dtype)
            dst = oa.piece(first, last)
            finite = _kernels.combine(ba[sl], tuple(x[sl] for x in xs), modes, lo, hi,
                                      tuple(m if m.size == 0 else m[first // 8:(last + 7) // 8] for m in masks_),
                                      factor, weights,
                                      consensus, normalize, dst, d, d.view(it), mixed, mixed.view(it),
                                      scratch("fused-total", block, ba.dtype),
                                      scratch("fused-divisor", block, ba.dtype))
            oa.put(dst, first, last)
            return finite

        run = run_compiled
    # Chunk-aligned pieces, several per worker: a descheduled worker holds up one piece only.
    starts = range(0, n, sparsify.PIECE)
    finite = sparsify.parallel_map(run, starts, [min(a + sparsify.PIECE, n) for a in starts])
    if oa.direct and all(f is True for f in finite):  # (a finite float32 may round to inf in fp16)
        mark_finite(out)
    return out


def _register(
    name: str, sparsification: str | None, consensus: bool, normalize: bool, rescale: bool, ref: str
):
    params = [
        Param("weight", float, Scope.PER_MODEL, low=0.0, bounded_by="normalize",
              why="it divides by the sum of the weights"),
        Param("density", float, Scope.PER_MODEL, default=1.0, low=0.0, high=1.0,
              why="it is the fraction of each task vector kept", inert=sparsification is None),
        Param("normalize", bool, default=normalize),
        Param("rescale", bool, default=rescale),
        Param("lambda", float, default=1.0, low=0.0,
              why="it scales the merged task vector; subtract a model with a negative weight instead"),
        Param("int8_mask", bool, default=False, inert=True),  # mergekit's memory saving
    ]
    if sparsification == "magnitude_outliers":
        params.append(Param("gamma", float, Scope.PER_MODEL, default=0.01, low=0.0, high=1.0,
                            why="it is the fraction of largest entries dropped"))
    if sparsification == "della_magprune":
        params.append(Param("epsilon", float, Scope.PER_MODEL, default=0.15, low=0.0, high=1.0,
                            why="it is the spread of keep probabilities around density"))

    def method(group: TensorGroup, **p) -> torch.Tensor:
        p.pop("int8_mask", None)
        return merge_task_vectors(
            group, sparsification=sparsification, consensus=consensus, lambda_=p.pop("lambda"), **p
        )

    method.__name__ = name
    merge_method(
        name,
        params=tuple(params),
        base=BasePolicy.REQUIRED,
        min_inputs=0,
        randomized=sparsification in ("random", "della_magprune"),
        reference=ref,
        check=_della_window if sparsification == "della_magprune" else None,
    )(method)


def _della_window(p: dict) -> str | None:
    """DELLA keeps entries with probabilities density - epsilon .. density + epsilon."""
    density, epsilon = p["density"], p["epsilon"]
    if 0 < density < 1 and (density - epsilon <= 0 or density + epsilon >= 1):
        return (
            f"density {density:g} and epsilon {epsilon:g} put a keep probability outside (0, 1) "
            f"(density - epsilon .. density + epsilon); lower epsilon below "
            f"{min(density, 1 - density):g} or move density away from 0 and 1"
        )
    return None


for _args in (
    ("task_arithmetic", None, False, False, False, "https://arxiv.org/abs/2212.04089"),
    ("ties", "magnitude", True, True, False, "https://arxiv.org/abs/2306.01708"),
    ("dare_ties", "random", True, False, True, "https://arxiv.org/abs/2311.03099"),
    ("dare_linear", "random", False, False, True, "https://arxiv.org/abs/2311.03099"),
    ("breadcrumbs", "magnitude_outliers", False, False, False, "https://arxiv.org/abs/2312.06795"),
    (
        "breadcrumbs_ties",
        "magnitude_outliers",
        True,
        False,
        False,
        "https://arxiv.org/abs/2312.06795",
    ),
    ("della", "della_magprune", True, True, True, "https://arxiv.org/abs/2406.11617"),
    ("della_linear", "della_magprune", False, False, True, "https://arxiv.org/abs/2406.11617"),
):
    _register(*_args)
del _args
