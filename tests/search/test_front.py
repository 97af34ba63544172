from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from evomerge.search.front import hypervolume, pareto_mask


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
