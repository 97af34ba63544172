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

import torch

from evomerge.merge import order_stats, sparsify
from evomerge.merge._pieces import HALF_DTYPES, half_rounding, round_scalar, use_half_pieces
from evomerge.merge._util import new_output
from evomerge.merge.combine_cpu import Survivors, combine_cpu
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


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
) -> Survivors:
    """``stats``: the band's order statistics, if already found (``_band_ranks``' ranks)."""
    x, base = group.tensors[i], group.base
    if sparsification is None or density >= 1:
        return Survivors(weight)
    n = base.numel()
    if sparsification in ("random", "della_magprune"):
        rng = sparsify.Uniform16(_stream_seed(group.seed or 0, group.name, i), base.device)
        if sparsification == "random":
            mask, ratio = sparsify.random_mask(x, base, density, rng, rescale)
            return Survivors(weight * ratio, mask=mask)
        return Survivors(
            weight, dense=sparsify.della_magprune(x - base, density, rescale, epsilon, rng)
        )
    ranks = _band_ranks(n, sparsification, density, gamma)
    if ranks is None:
        return Survivors(weight, lo=math.inf)
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
) -> Survivors:
    lo, hi = bounds[0], (bounds[1] if len(bounds) > 1 else math.inf)
    ratio = sparsify.l1_ratio_in_band(x, base, lo, hi) if rescale else 1.0
    return Survivors(weight * ratio, lo=lo, hi=hi)


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
    # float32/64 on the CPU, or bf16/fp16 read in float32 pieces
    fast = sparsify.use_numpy(base, *group.tensors) or use_half_pieces(base, *group.tensors)
    # Half tensors merged as they are: mergekit's arithmetic in their dtype (_pieces). Random
    # sparsifications compute in float32: their masks are evomerge's own, so no mergekit result
    # to match, and the float32 loops are the fast ones.
    rounding = None if sparsification in ("random", "della_magprune") else half_rounding(base)

    def survivors_of(i: int) -> Survivors:
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
        # Rounding is monotonic: the rounded deltas' order statistics are the rounded statistics.
        stats = {i: [round_scalar(v, rounding) for v in f] for i, f in zip(ranks, found, strict=True)}
        survivors = sparsify.parallel_map(
            lambda i: _survivors(group, i, sparsification, weight[i], density[i], rescale,
                                 gamma[i] if gamma else 0.0, 0.0, stats.get(i)),
            range(n_models),
        )
        return combine_cpu(group, survivors, weight, consensus, normalize, lambda_, rounding)
    if fast and sparsification == "random":
        # Every model's mask at once, in spans shared out on the workers (sparsify.random_masks).
        masked = [i for i in range(n_models) if density[i] < 1]
        found = sparsify.random_masks(
            [group.tensors[i] for i in masked], base, [density[i] for i in masked],
            [_stream_seed(group.seed or 0, group.name, i) for i in masked], rescale)
        masks = dict(zip(masked, found, strict=True))
        survivors = [Survivors(weight[i] * masks[i][1], mask=masks[i][0]) if i in masks
                     else Survivors(weight[i]) for i in range(n_models)]
        return combine_cpu(group, survivors, weight, consensus, normalize, lambda_, rounding)
    if fast:  # one model per worker: each pass is independent and numpy releases the GIL
        survivors = sparsify.parallel_map(survivors_of, range(n_models))
        return combine_cpu(group, survivors, weight, consensus, normalize, lambda_, rounding)
    survivors = [survivors_of(i) for i in range(n_models)]
    # Pass 2, piece by piece: rebuild each surviving, weighted delta; elect signs; combine.
    # Half tensors: mergekit's arithmetic (weights a tensor of their dtype, sums over the models
    # accumulated in float32 and rounded once; a Python scalar stays float32, as torch takes it).
    half = base.dtype if base.dtype in HALF_DTYPES else None  # the dtype each step rounds to
    acc_dtype = torch.float32 if half else base.dtype
    weight = [round_scalar(w, half) for w in weight]
    flat_base = base.reshape(-1)
    flat_x = [t.reshape(-1) for t in group.tensors]
    out = new_output(base.shape, base.dtype, base.device).view(-1)  # the resident tensor, if offered
    total_weight = round_scalar(sum(weight), half)
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
                if s.factor != 1:
                    d.mul_(round_scalar(s.factor, half))
            deltas.append(d)
        acc = deltas[0].to(acc_dtype, copy=True)
        for d in deltas[1:]:
            acc.add_(d)
        if consensus:
            # TIES: keep only entries whose sign agrees with the sign of the weighted sum.
            # (sign(0) is 0, so entries that are exactly zero never count towards the divisor.)
            # Masks are built with float arithmetic: on CPU it is several times faster than
            # comparisons that produce bool tensors.
            elected = acc.sign_().add_(0.5).sign_()  # +1 where the sum is >= 0, else -1
            total = torch.zeros_like(b, dtype=acc_dtype)
            divisor = torch.zeros_like(b, dtype=acc_dtype)
            for d, w in zip(deltas, weight, strict=True):
                agrees = torch.sign(d).mul_(elected).relu_()
                total.add_(d.mul_(agrees))
                divisor.add_(agrees, alpha=w)
            mixed, divisor = total.to(base.dtype), divisor.to(base.dtype)
            divisor.add_(torch.abs(divisor).sign_().neg_().add_(1))  # an empty divisor becomes 1
            if normalize:
                mixed.div_(divisor)
        else:
            mixed = acc.to(base.dtype)
            if normalize:
                mixed.div_(1.0 if abs(total_weight) < 1e-8 else total_weight)
        if lambda_ != 1:
            mixed.mul_(lambda_)
        torch.add(b, mixed, out=out[sl])
    return out.reshape(base.shape)


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
        reads_half_as_float32=True,
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
