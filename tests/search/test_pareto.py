from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from evomerge.search.pareto import hypervolume, pareto_mask


def test_pareto_mask_by_hand():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [1.0, 0.0]])
    # [0.4, 0.4] is dominated by [0.5, 0.5]; equal points do not dominate each other.
    assert pareto_mask(pts).tolist() == [True, True, True, False, True]


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
def test_front_members_are_not_dominated_and_the_rest_are(rows):
    pts = np.array(rows)
    mask = pareto_mask(pts)
    assert mask.any()
    for i, p in enumerate(pts):
        dominated = any(np.all(q >= p) and np.any(q > p) for q in pts)
        assert mask[i] == (not dominated)


def test_hypervolume_of_a_staircase():
    front = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    # (1, 0) and (0, 1) span no area above the reference (0, 0); (0.5, 0.5) spans 0.25.
    assert abs(hypervolume(front, np.array([0.0, 0.0])) - 0.25) < 1e-12
    assert abs(hypervolume(np.array([[1.0, 1.0]]), np.array([0.0, 0.0])) - 1.0) < 1e-12


def test_reference_point_is_declared_or_the_worst_value():
    from evomerge.search.objectives import BoundObjective
    from evomerge.search.pareto import reference_point

    pts = np.array([[0.2, -50.0], [0.6, -40.0]])  # accuracy (max), perplexity (min, sign-flipped)
    acc, ppl = BoundObjective("a/acc", 1.0, 1.0), BoundObjective("t/perplexity", -1.0, 1.0)
    assert reference_point(pts, [acc, ppl]).tolist() == [0.2, -50.0]
    declared = [BoundObjective("a/acc", 1.0, 1.0, reference=0.0),
                BoundObjective("t/perplexity", -1.0, 1.0, reference=100.0)]
    assert reference_point(pts, declared).tolist() == [0.0, -100.0]  # in 'larger is better' form
    # Points worse than a declared reference add nothing.
    assert hypervolume(np.array([[0.5, -150.0]]), np.array([0.0, -100.0])) == 0.0


def test_pareto_rank_peels_fronts():
    from evomerge.search.pareto import pareto_rank

    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.4, 0.4], [0.3, 0.3], [0.5, 0.5]])
    assert pareto_rank(pts) == [0, 0, 1, 2, 0]
