from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from evomerge.eval.data import nested_subset


@given(st.integers(1, 500), st.integers(1, 500), st.integers(1, 500), st.integers(0, 3))
def test_subsets_are_nested_sorted_and_deterministic(n, a, b, seed):
    small, large = sorted((a, b))
    s, l_ = nested_subset(n, small, seed), nested_subset(n, large, seed)
    assert set(s) <= set(l_)
    assert len(s) == min(small, n) and s == sorted(s)
    assert s == nested_subset(n, small, seed)
    assert nested_subset(n, None, seed) == list(range(n))


def test_different_seeds_pick_different_subsets():
    assert nested_subset(1000, 32, 0) != nested_subset(1000, 32, 1)
