"""evomerge.eval.anchors: nested anchor orderings, weights, exact recovery, and a better ranking
than random subsets where examples fall into clusters (synthetic matrices, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.eval.anchors import (
    anchor_order,
    anchor_subset,
    anchor_subsets,
    estimate,
    random_subset,
)
from evomerge.eval.data import nested_subset


def clustered(models: int, n: int, clusters: int, seed: int, flip: float = 0.05,
              common: float = 1.0) -> np.ndarray:
    """Outcomes of ``models`` on ``n`` examples in ``clusters`` groups of different sizes: each
    model solves a group or not (its skill, ``common`` to all groups plus its own per group,
    against the group's difficulty), ``flip`` of the outcomes at random."""
    rng = np.random.default_rng(seed)
    group = rng.choice(clusters, size=n, p=rng.dirichlet(np.ones(clusters)))
    skill = common * rng.normal(size=(models, 1)) + 0.8 * rng.normal(size=(models, clusters))
    solved = (skill > rng.normal(size=clusters)).astype(float)
    y = solved[:, group]
    noise = rng.random(y.shape) < flip
    return np.where(noise, 1.0 - y, y)


def spearman(a, b) -> float:
    def ranks(x):
        x = np.asarray(x, dtype=float)
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        top = np.cumsum(counts)
        return (top - (counts - 1) / 2.0)[inv]  # tied values share their mean rank

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def test_orders_are_nested_and_seeded():
    y = clustered(12, 300, 10, seed=0)
    long = anchor_order(y, 64, seed=3)
    assert len(long) == 64 == len(set(long.tolist()))
    assert (anchor_order(y, 16, seed=3) == long[:16]).all()
    assert (anchor_order(y, 64, seed=3) == long).all()
    assert not (anchor_order(y, 64, seed=4) == long).all()  # equal columns: the seed picks among them
    subsets = anchor_subsets(y, [8, 32, 64], seed=3)
    assert (subsets[8].indices == subsets[32].indices[:8]).all()
    assert (subsets[64].indices == long).all()


@pytest.mark.parametrize("k", [1, 5, 40, 300])
def test_weights_and_fixed_share_sum_to_one(k):
    y = clustered(8, 300, 6, seed=1)
    y[:, :50] = 1.0  # everyone right: no ranking information, still half the weight
    y[:, 50:80] = 0.0
    sub = anchor_subset(y, anchor_order(y, k, seed=0))
    assert len(sub.indices) == k
    assert (sub.weights >= 0).all()
    assert sub.weights.sum() + sub.fixed_share == pytest.approx(1.0)
    if k == 300:  # every example is its own anchor: the estimate is the mean itself
        assert sub.fixed_share == 0.0
        assert estimate(sub, y[:, sub.indices]) == pytest.approx(y.mean(axis=1))


def test_constant_examples_come_last_and_count_at_their_outcome():
    y = clustered(10, 200, 5, seed=2, flip=0.0)
    informative = y.max(axis=0) > y.min(axis=0)
    y[:, :60] = 1.0
    informative[:60] = False
    patterns = {tuple(c) for c in y[:, informative].T}
    order = anchor_order(y, len(patterns) + 2, seed=0)
    assert informative[order[: len(patterns)]].all()
    sub = anchor_subset(y, order, 3)
    assert sub.fixed_share >= 60 / 200  # the constant examples have no anchor among the first 3
    assert sub.offset >= 60 / 200  # ... and count as right, as every scored model was
    assert estimate(sub, np.ones(3)) == pytest.approx(1.0)  # right everywhere: 1 at any size


def test_k_distinct_patterns_are_recovered_exactly_with_k_anchors():
    rng = np.random.default_rng(0)
    # four informative patterns over four models, and two constant ones (everyone right or wrong)
    patterns = np.array([[1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1], [0, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 0]],
                        dtype=float)
    which = rng.permutation(np.arange(120) % 6)  # 20 examples of each pattern
    y = patterns[:, which]
    informative = [0, 1, 2, 5]
    sub = anchor_subset(y, anchor_order(y, 4, seed=0))
    assert sorted({int(which[i]) for i in sub.indices}) == informative
    assert sub.fixed_share == pytest.approx(40 / 120) and sub.fixed_value == 0.5
    assert estimate(sub, y[:, sub.indices]) == pytest.approx(y.mean(axis=1))
    for _ in range(5):  # a new model whose outcome follows the pattern, as the others on constants
        new = np.array([rng.integers(0, 2), rng.integers(0, 2), rng.integers(0, 2), 0, 1, rng.integers(0, 2)],
                       dtype=float)[which]
        assert estimate(sub, new[sub.indices]) == pytest.approx(new.mean())
    six = anchor_subset(y, anchor_order(y, 6, seed=0))  # every informative example comes first
    assert set(which[six.indices[:4]].tolist()) == set(informative)


def test_anchors_rank_held_out_models_better_than_random_subsets():
    wins = []  # models of similar overall skill, right on different groups: random subsets rank
    for seed in range(5):  # them noisily
        y = clustered(20 + 40, 1000, 40, seed=seed, flip=0.02, common=0.3)
        calib, held = y[:20], y[20:]
        full = held.mean(axis=1)
        a = anchor_subset(calib, anchor_order(calib, 40, seed=seed))
        r = random_subset(y.shape[1], 40, seed=seed)
        wins.append(spearman(estimate(a, held[:, a.indices]), full)
                    - spearman(estimate(r, held[:, r.indices]), full))
    assert np.median(wins) > 0.03, wins


def test_random_subset_is_todays_nested_subset_with_equal_weights():
    sub = random_subset(500, 32, seed=7)
    assert sub.indices.tolist() == nested_subset(500, 32, 7)
    assert sub.weights == pytest.approx(np.full(32, 1 / 32))
    assert sub.fixed_share == 0.0
    y = np.random.default_rng(0).random(500)
    assert estimate(sub, y[sub.indices]) == pytest.approx(y[sub.indices].mean())


def test_bad_input_is_refused_in_a_sentence():
    with pytest.raises(ValueError, match="non-finite"):
        anchor_order(np.array([[1.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="at least one model"):
        anchor_order(np.zeros((0, 5)), 1)
    with pytest.raises(ValueError, match="distinct example indices"):
        anchor_subset(np.zeros((2, 5)), [1, 1])
    with pytest.raises(ValueError, match="outcomes for a subset"):
        random_subset(10, 3).estimate(np.ones(4))


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_constant_examples_claim_their_share_of_every_prefix(share):
    rng = np.random.default_rng(0)
    y = np.zeros((6, 200))
    y[:, :50] = rng.random((6, 50)) < 0.5  # 50 informative examples, 150 wrong for every model
    constant = set(range(50, 200))
    assert not set(anchor_order(y, 40, seed=1).tolist()) & constant  # default: informative first
    order = anchor_order(y, 40, seed=1, constant_share=share)
    for k in (8, 20, 40):
        taken = len(set(order[:k].tolist()) & constant)
        assert abs(taken - share * 0.75 * k) <= 1  # 75% of the split is constant
    # a model that gets the constant examples right is now seen doing so
    sub = anchor_subset(y, order, 20)
    learned = np.ones(200)
    assert sub.estimate(learned[sub.indices]) == pytest.approx(1.0)
