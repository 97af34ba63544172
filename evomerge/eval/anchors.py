"""Anchor subsets: a few examples, chosen from scores already seen, that stand for a whole split.

Multi-fidelity search screens candidates on small nested *random* subsets of a task's search
split; at 32 or 64 examples their ranking is noisy. Examples are not equally informative: many
are right (or wrong) for nearly every merge, and many behave alike (a model that gets one right
gets the other right too). tinyBenchmarks (Polo et al. 2024) and MERGE³ (ICML 2025) use that:
from the per-example correctness of models already scored, they cluster the examples by their
correctness patterns, keep one representative per cluster ("anchor") and estimate a new model's
full score as the mean of its outcomes on the anchors weighted by the share of the split each
anchor represents.

Here the clustering is a greedy *ordering*, so the anchors are nested as the random fidelity
levels are: the first 32 anchors are inside the first 64, and a candidate promoted from one level
to the next keeps its outcomes (only the weights are recomputed per level). Given ``correct``
(rows: models already scored on every example; columns: the split's examples; entries 1.0/0.0
or a per-example metric in [0, 1]):

- examples are grouped by their column (their *pattern*): identical patterns are one point, with
  the number of examples it stands for as its mass; the distance between two patterns is the
  share of models on which they differ (mean absolute difference);
- the first anchor is the medoid (the pattern nearest to all the others); each next one splits
  the heaviest anchor's stratum (the examples nearest to it): of the examples in it, the one
  whose pattern most lowers the mass-weighted distance of every pattern to its nearest anchor (a
  new pattern while the stratum holds one, else another example of the same pattern). A plain
  greedy k-medoids (facility location, one anchor per cluster) leaves some anchors standing for
  10-18% of the zoo's splits, whose single outcome then swings a new model's estimate; splitting
  the heaviest stratum keeps every weight near 1/k, a stratified sample of one representative
  example per stratum (benchmarks/anchor_subsets.py measured both). A pattern's examples are
  taken in a seeded permutation (the seed decides which of equal examples is taken, and breaks
  ties between equal gains);
- *constant* examples, which every scored model gets right (or every one wrong), tell nothing
  about the order of models, so by default they come after every informative example
  (``constant_share`` > 0 gives them that fraction of their share of every prefix instead: a
  guard for when the scored models all missed something later ones may get); while none of their
  pattern is an anchor, the estimate counts them at the outcome every scored model had (a fixed
  offset: it shifts every estimate alike and leaves the ranking to the informative anchors).
  They still count: the anchors' weights and their fixed share sum to 1.

Weights of a prefix of ``k`` anchors: every example's share ``1/n`` goes to its nearest anchors
(split equally among ties), constant examples with no identical anchor to the fixed share. The
estimate of a model's full score is ``weights @ outcomes_on_anchors + offset``. Where the
informative examples take ``k`` distinct patterns of equal mass, ``k`` anchors take one of each
and the estimate is exact for any model whose outcome depends only on an example's pattern and
that agrees with the scored models on the constant examples. ``random_subset`` is the baseline:
today's ``nested_subset`` with equal weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evomerge.eval.data import nested_subset


@dataclass(frozen=True)
class WeightedSubset:
    """Examples of a split (``indices``) whose outcomes, weighted, estimate the mean outcome over
    the whole split. ``fixed_share`` of the split is not represented by any of them but counted
    at ``fixed_value`` (the constant examples' common outcome); weights plus it sum to 1."""

    indices: np.ndarray
    weights: np.ndarray
    fixed_share: float = 0.0
    fixed_value: float = 0.0

    @property
    def offset(self) -> float:
        return self.fixed_share * self.fixed_value

    def estimate(self, outcomes) -> np.ndarray | float:
        """The estimated full-split score from ``outcomes`` on ``indices`` (last axis; one model
        or a matrix of models)."""
        y = np.asarray(outcomes, dtype=float)
        if y.shape[-1] != len(self.indices):
            raise ValueError(f"{y.shape[-1]} outcomes for a subset of {len(self.indices)} examples.")
        est = y @ self.weights + self.offset
        return float(est) if est.ndim == 0 else est


@dataclass(frozen=True)
class AnchoredLevel:
    """A fidelity level scored on anchors: each task named in ``subsets`` scores its subset (and
    reports the weighted estimate); any other task scores ``level`` random examples as usual."""

    level: int | None
    subsets: dict[str, WeightedSubset]

    def for_task(self, name: str) -> WeightedSubset | int | None:
        return self.subsets.get(name, self.level)


def estimate(subset: WeightedSubset, outcomes) -> np.ndarray | float:
    """``subset.estimate``: the full-split score estimated from the outcomes on its examples."""
    return subset.estimate(outcomes)


def _matrix(correct) -> np.ndarray:
    y = np.asarray(correct, dtype=float)
    if y.ndim != 2 or y.shape[0] < 1 or y.shape[1] < 1:
        raise ValueError(f"a correctness matrix needs at least one model (row) and one example "
                         f"(column); got shape {y.shape}.")
    if not np.isfinite(y).all():
        raise ValueError("the correctness matrix has non-finite entries; score every example "
                         "of the split for every model it holds.")
    return y


def _patterns(y: np.ndarray, seed: int):
    """Distinct columns of ``y`` in order of first appearance in a seeded permutation of the
    examples: (patterns (p x m), members (p lists of example indices, permuted order))."""
    perm = np.random.default_rng(seed).permutation(y.shape[1])
    _, first, inverse = np.unique(y[:, perm].T, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # pattern id -> position
    members: list[list[int]] = [[] for _ in first]
    for pos, pid in enumerate(inverse):
        members[rank[pid]].append(int(perm[pos]))
    patterns = np.stack([y[:, m[0]] for m in members])
    return patterns, members


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of models on which patterns differ: mean |a_i - b_j| over the models."""
    out = np.zeros((len(a), len(b)))
    for i in range(a.shape[1]):  # one model at a time: p x p, not p x p x models, in memory
        out += np.abs(a[:, i, None] - b[None, :, i])
    return out / a.shape[1]


def _split_heaviest(dist: np.ndarray, mass: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` anchors over the patterns ``dist`` relates (``mass``: examples per pattern),
    as pattern ids (a pattern again for a second example of it): first the medoid, then, each
    step, an example of the heaviest anchor's stratum (the examples it is nearest to), the one
    whose pattern most lowers the mass-weighted distance to the nearest anchor (a new pattern
    when the stratum holds one; else another example of its own). Ties: the lowest position."""
    chosen: list[int] = []
    used = np.zeros(len(mass))  # anchors per pattern
    nearest = np.full(len(mass), dist.max(initial=0.0) + 1.0)  # no anchor yet: farther than any
    while len(chosen) < min(k, int(mass.sum())):
        gain = (mass[:, None] * np.maximum(nearest[:, None] - dist, 0.0)).sum(axis=0)
        room = used < mass
        if chosen:
            near = (dist == nearest[:, None]) & (used > 0)  # pattern -> its nearest anchored patterns
            per_anchor = (mass / (near * used).sum(axis=1))[:, None] * near  # share of each anchor
            weight = per_anchor.sum(axis=0)
            weight[used == 0] = -np.inf
            stratum = near[:, int(np.argmax(weight))] & room
            if stratum.any():
                room = stratum
        j = int(np.argmax(np.where(room, gain, -np.inf)))  # the first of equal gains
        chosen.append(j)
        used[j] += 1
        nearest = np.minimum(nearest, dist[:, j])
    return chosen


def anchor_order(correct, k: int, seed: int = 0, constant_share: float = 0.0) -> np.ndarray:
    """The first ``k`` anchors (example indices, most representative first) of the examples
    whose outcomes for already-scored models are the columns of ``correct``. Any prefix is the
    anchor set of that size: a smaller ``k`` gives a prefix of a larger one's order.
    ``constant_share``: the constant examples' claim on every prefix, as a fraction of their share
    of the split (0: they come after every informative one; 1: in proportion to their number)."""
    y = _matrix(correct)
    k = min(int(k), y.shape[1])
    if k < 1:
        raise ValueError(f"an anchor set needs at least one example; got k={k}.")
    patterns, members = _patterns(y, seed)
    mass = np.array([len(m) for m in members], dtype=float)
    informative = np.flatnonzero(patterns.max(axis=1) > patterns.min(axis=1))
    constant = np.flatnonzero(patterns.max(axis=1) == patterns.min(axis=1))
    orders = []
    for group in (informative, constant):
        sub = patterns[group]
        order = _split_heaviest(_distances(sub, sub), mass[group], k) if len(group) else []
        orders.append([int(group[i]) for i in order])
    claim = constant_share * mass[constant].sum() / mass.sum()  # the constant group's share of a prefix
    picked: list[int] = []  # pattern ids, one per anchor
    used = [0, 0]
    while len(picked) < k and (used[0] < len(orders[0]) or used[1] < len(orders[1])):
        # the constant group takes the next anchor while it is behind its claim, or once the
        # informative one has run out: every prefix keeps its share
        g = 1 if used[0] >= len(orders[0]) or (used[1] < len(orders[1]) and used[1] < claim * (len(picked) + 1) - 0.5) else 0
        picked.append(orders[g][used[g]])
        used[g] += 1
    taken = np.zeros(len(members), dtype=int)
    out = []
    for pid in picked:  # a pattern's examples in the seeded order
        out.append(members[pid][taken[pid]])
        taken[pid] += 1
    return np.array(out, dtype=int)


def anchor_subset(correct, order, k: int | None = None) -> WeightedSubset:
    """The first ``k`` anchors of ``order`` (all of it by default) with their weights: each
    example's share of the split goes to its nearest anchors in ``correct``'s patterns (split
    equally among ties); an example every scored model got the same outcome on, with no anchor
    of its own pattern, counts at that outcome in the fixed share instead."""
    y = _matrix(correct)
    order = np.asarray(order, dtype=int)
    idx = order if k is None else order[: int(k)]
    if len(idx) < 1:
        raise ValueError("an anchor set needs at least one example; got an empty order.")
    if len(set(idx.tolist())) != len(idx) or idx.min() < 0 or idx.max() >= y.shape[1]:
        raise ValueError(f"anchors must be distinct example indices below {y.shape[1]}.")
    n = y.shape[1]
    dist = _distances(y.T, y[:, idx].T)  # examples x anchors
    const = y.max(axis=0) == y.min(axis=0)
    dist[const] = np.where(dist[const] == 0.0, 0.0, np.inf)  # only an identical anchor stands for them
    best = dist.min(axis=1, keepdims=True)
    near = (dist == best) & np.isfinite(best)
    share = near / np.maximum(near.sum(axis=1, keepdims=True), 1) / n
    weights = share.sum(axis=0)
    orphan = ~near.any(axis=1)
    value = float(y[0, orphan].mean()) if orphan.any() else 0.0
    return WeightedSubset(idx.copy(), weights, float(orphan.sum() / n), value)


def anchor_subsets(correct, ks, seed: int = 0) -> dict[int, WeightedSubset]:
    """Nested anchor subsets of each size in ``ks`` (one ordering, cut at each size)."""
    ks = [int(k) for k in ks]
    order = anchor_order(correct, max(ks), seed)
    return {k: anchor_subset(correct, order, k) for k in ks}


def random_subset(n: int, k: int, seed: int = 0) -> WeightedSubset:
    """The baseline: today's nested random subset of ``k`` of ``n`` examples, equal weights."""
    idx = np.array(nested_subset(n, k, seed), dtype=int)
    return WeightedSubset(idx, np.full(len(idx), 1.0 / len(idx)))
