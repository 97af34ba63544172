"""Successive halving: who is promoted, and in what order candidates are ranked."""

from __future__ import annotations

import numpy as np

from evomerge.search.fidelity import Bracket, Rungs, Trial, rank


def _cands(n):
    return [Trial(i, i, np.zeros(1), None, f"h{i}") for i in range(n)]


def test_a_bracket_promotes_the_best_third_until_the_top():
    rungs = Rungs((4, 16, None), eta=3)
    cands = _cands(9)
    b = Bracket(cands, rungs)
    for c in cands:
        c.scores[0] = {"a": c.number / 10}
    assert b.rung_complete()
    up = b.advance(lambda s: (s["a"],))
    assert [c.number for c in up] == [8, 7, 6] and b.level == 16
    assert not b.rung_complete()
    for c in up:
        c.scores[1] = {"a": 1 - c.number / 10}  # the order flips at the higher level
    up = b.advance(lambda s: (s["a"],))
    assert [c.number for c in up] == [6] and b.level is None
    up[0].scores[2] = {"a": 0.5}
    assert b.advance(lambda s: (s["a"],)) == [] and b.done
    assert cands[6].final() == (2, {"a": 0.5}) and cands[0].final() == (0, {"a": 0.0})


def test_failed_candidates_are_never_promoted_and_an_all_failed_rung_ends_the_bracket():
    rungs = Rungs((4, None), eta=2)
    cands = _cands(4)
    b = Bracket(cands, rungs)
    for c in cands:
        c.scores[0] = None if c.number != 1 else {"a": 0.0}
    assert [c.number for c in b.advance(lambda s: (s["a"],))] == [1]
    b2 = Bracket(_cands(2), rungs)
    for c in b2.trials:
        c.scores[0] = None
    assert b2.advance(lambda s: (s["a"],)) == [] and b2.done


def test_rank_puts_the_pareto_front_first_then_fitness():
    # (fitness, objective 1, objective 2): item 2 has the best fitness but is dominated by item 0.
    points = [(0.5, 1.0, 1.0), (0.4, 0.0, 2.0), (0.9, 0.5, 0.5), (0.1, 2.0, 0.0)]
    order = rank(list(range(4)), points)
    assert set(order[:3]) == {0, 1, 3} and order[3] == 2
    assert order[:3] == [0, 1, 3]  # within the front, by fitness
    assert rank([0, 1], [(0.2,), (0.7,)]) == [1, 0]  # one objective: by value


def test_hyperband_brackets_start_at_every_level():
    from evomerge.search.fidelity import hyperband_schedule

    assert hyperband_schedule(3, 3) == [(9, 0), (5, 1), (3, 2)]
    assert hyperband_schedule(3, 2) == [(4, 0), (3, 1), (3, 2)]
    assert hyperband_schedule(1, 3) == [(1, 0)]


def test_a_candidate_with_none_to_rank_against_goes_straight_to_the_top():
    rungs = Rungs((4, 8, 16, None), eta=3)
    alone = Bracket(_cands(1), rungs)  # e.g. an optimiser that proposes one point at a time
    assert alone.rung == 3 and alone.level is None
    pair = Bracket(_cands(2), rungs)
    for c in pair.trials:
        c.scores[0] = {"a": float(c.number)}
    up = pair.advance(lambda s: (s["a"],))
    assert [c.number for c in up] == [1] and pair.rung == 3  # the lone survivor skips 8 and 16
    nine = Bracket(_cands(9), rungs)
    for c in nine.trials:
        c.scores[0] = {"a": float(c.number)}
    assert len(nine.advance(lambda s: (s["a"],))) == 3 and nine.rung == 1  # three still to rank
