"""Successive halving over the evaluators' fidelity levels.

A bracket takes a batch of trials (for CMA-ES, its generation), scores all
of them at the lowest level (e.g. 32 examples per task), keeps the best
``1/eta`` of them for the next level, and so on up to the top level (all
examples). The optimiser is then told each candidate's score at the highest
level it reached: every level scores a nested subset of the same examples, so a
low-level score estimates the same quantity, only more noisily. Ranking for
promotion is by Pareto rank first (so multi-objective searches promote their
front), then by the scalarised fitness. A candidate with none left to be ranked
against (a bracket of one, a lone survivor) goes straight to the top level.

With one level and brackets of one candidate this is plain evaluation, so the
controller has a single code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from evomerge.search.pareto import pareto_rank


@dataclass(frozen=True)
class Rungs:
    levels: tuple[int | None, ...]  # increasing; None means every example
    eta: int = 3

    def cost(self, level: int | None, full: int) -> int:
        """Examples per task scored at ``level`` (``full`` = the task's size)."""
        return full if level is None else min(level, full)

    def promoted(self, n: int) -> int:
        """How many of ``n`` scored trials go up one level."""
        return max(1, math.floor(n / self.eta)) if n else 0

    def rung_for(self, rung: int, n: int) -> int:
        """Where ``n`` candidates due at ``rung`` are scored: there, unless one is alone, with
        nothing to be ranked against; it goes straight to the top level (screening it first
        would only add the lower levels' cost)."""
        return len(self.levels) - 1 if n == 1 else rung


@dataclass
class Trial:
    """A candidate recipe: what the CLI, the front and MLflow call a trial."""

    suggestion: int  # the optimiser's id for it (what ``tell`` is given)
    number: int  # the trial number: order of proposal in this run
    x: np.ndarray
    recipe: object
    digest: str
    scores: dict[int, dict[str, float] | None] = field(default_factory=dict)  # rung -> scores (None: failed)

    def final(self) -> tuple[int, dict[str, float] | None]:
        """The highest rung reached and its scores."""
        rung = max(self.scores)
        return rung, self.scores[rung]


class Bracket:
    """One round of successive halving over ``trials``."""

    def __init__(self, trials: list[Trial], rungs: Rungs, start: int = 0) -> None:
        self.trials = trials
        self.rungs = rungs
        self.rung = rungs.rung_for(start, len(trials))
        self.improved = False  # whether it raised the search's best (for patience)
        self.active = list(trials)  # those scored at the current rung
        self.done = False

    @property
    def level(self) -> int | None:
        return self.rungs.levels[self.rung]

    def rung_complete(self) -> bool:
        return all(self.rung in c.scores for c in self.active)

    def advance(self, rank_key: Callable[[dict[str, float]], Sequence[float]],
                violation: Callable[[dict[str, float]], float] | None = None) -> list[Trial]:
        """Close the current rung; returns the trials promoted (empty: the bracket is done).
        ``violation``: a trial's constraint violation at this rung (0: feasible); feasible
        trials are promoted first."""
        alive = [c for c in self.active if c.scores[self.rung] is not None]
        if self.rung + 1 >= len(self.rungs.levels) or not alive:
            self.done = True
            return []
        keep = self.rungs.promoted(len(self.active))
        missed = [violation(c.scores[self.rung]) for c in alive] if violation is not None else None
        order = rank(alive, [rank_key(c.scores[self.rung]) for c in alive], missed)
        promoted, seen = [], set()
        for i in order:  # distinct recipes: a duplicate would only take a slot from another
            if alive[i].digest not in seen and len(promoted) < keep:
                promoted.append(alive[i])
                seen.add(alive[i].digest)
        self.active = promoted
        self.rung = self.rungs.rung_for(self.rung + 1, len(promoted))
        return list(self.active)


def hyperband_schedule(levels: int, eta: int) -> list[tuple[int, int]]:
    """Hyperband's brackets as (candidates, starting rung), most aggressive first.

    Bracket ``s`` (``s_max`` down to 0) starts ``ceil((s_max + 1) / (s + 1) * eta**s)``
    candidates at rung ``s_max - s``: from many cheap screens to a few full evaluations, which
    hedges against low fidelities that rank candidates badly.
    """
    s_max = levels - 1
    return [(math.ceil((s_max + 1) / (s + 1) * eta**s), s_max - s) for s in range(s_max, -1, -1)]


def rank(items: list, points: list[Sequence[float]], violations: Sequence[float] | None = None) -> list[int]:
    """Indices best first: by Pareto rank (all values maximised), then by the first value.

    The first value is the scalarised fitness; the rest are the objectives. With
    ``violations`` (0: feasible), the feasible come first, ranked among themselves, then the
    others by increasing violation (Deb's feasibility rules).
    """
    violations = list(violations) if violations is not None else [0.0] * len(items)
    ok = [i for i in range(len(items)) if violations[i] <= 0]
    out = [i for i in range(len(items)) if violations[i] > 0]
    order: list[int] = []
    if ok:
        pts = np.array([points[i][1:] if len(points[i]) > 1 else points[i] for i in ok], dtype=float)
        ranks = pareto_rank(pts)
        order_key = {i: (-ranks[k], points[i][0], -i) for k, i in enumerate(ok)}
        order = sorted(ok, key=lambda i: order_key[i], reverse=True)
    return order + sorted(out, key=lambda i: (violations[i], i))
