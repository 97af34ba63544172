"""The real zoo (slow: trains it, ~4 min on 2 cores): experts specialise and merging pays off."""

from __future__ import annotations

import pytest

from evomerge.zoo.build import build_zoo, default_zoo_dir
from evomerge.zoo.report import zoo_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report():
    zoo = build_zoo(default_zoo_dir(), log=lambda s: None)  # cached after the first build
    return zoo_report(zoo)


def test_each_expert_is_best_at_its_own_skill_among_the_experts(report):
    experts = [r for r in report.rows if r.name in report.skills]
    for e in experts:
        others = [o.scores[e.name] for o in experts if o is not e]
        assert e.scores[e.name] > max(others)


def test_a_tuned_merge_beats_every_expert_and_the_average_on_the_mean(report):
    tuned = report.row("merge_searched").mean
    assert all(tuned > report.row(s).mean for s in report.skills)
    assert tuned > report.row("average").mean
