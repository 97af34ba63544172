"""Search quality and kind-specific behaviour of the optimisers (CMA-ES generations, restarts).

The ask/tell protocol every optimiser follows is checked by evomerge.testing.optimizers
(tests/testing/test_suite_optimizers.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.search.optimizers import OPTIMIZERS
from evomerge.testing.optimizers import TARGET, fitness


def run(name: str, budget: int, seed: int = 0) -> float:
    """The best fitness in ``budget`` suggestions, each told at once."""
    opt = OPTIMIZERS.get(name)(len(TARGET), 1, seed)
    best = -np.inf
    for _ in range(budget):
        s = opt.ask()
        f = fitness(s.x)
        best = max(best, f)
        opt.tell(s.id, (f,))
    return best


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS.names() if n not in ("random", "nsga2")])
def test_beats_random_search_at_equal_budget(name):
    budget = 60
    assert run(name, budget) > run("random", budget)


def test_single_objective_optimisers_refuse_several_objectives():
    with pytest.raises(ValueError, match="scalarisation"):
        OPTIMIZERS.get("cmaes")(4, 2)
    opt = OPTIMIZERS.get("nsga2")(4, 2, 0)
    s = opt.ask()
    opt.tell(s.id, (1.0, -2.0))


def test_cmaes_waits_for_its_generation():
    opt = OPTIMIZERS.get("cmaes")(4, 1, 0, popsize=4)
    first = [opt.ask() for _ in range(4)]
    assert opt.ask() is None
    for s in reversed(first):  # any order
        opt.tell(s.id, (fitness(s.x),))
    assert opt.ask() is not None


@pytest.mark.parametrize("strategy", ["ipop", "bipop"])
def test_cmaes_restarts_when_the_search_stalls(strategy):
    # A flat fitness makes pycma's stopping criteria fire within a few generations.
    opt = OPTIMIZERS.get("cmaes")(4, 1, 0, popsize=4, restarts=2, restart_strategy=strategy)
    first_popsize = opt.es.popsize
    for _ in range(60):
        batch = []
        while (s := opt.ask()) is not None:
            batch.append(s)
        for s in batch:
            opt.tell(s.id, (0.0,))
        if opt.restarts_left == 0:
            break
    assert opt.restarts_done == 2
    if strategy == "ipop":
        assert opt.es.popsize == 4 * first_popsize  # doubled at each restart
    with pytest.raises(ValueError, match="restart_strategy"):
        OPTIMIZERS.get("cmaes")(4, 1, 0, restart_strategy="nope")


def test_gp_spreads_the_points_it_proposes_while_others_are_pending():
    # Optuna's GPSampler takes running trials as pending (qLogEI): three proposals made before
    # any is told land apart instead of on the one maximiser of the same acquisition.
    opt = OPTIMIZERS.get("gp")(4, 1, 0)
    for _ in range(12):
        s = opt.ask()
        opt.tell(s.id, (fitness(s.x),))
    out = [opt.ask().x for _ in range(3)]
    gaps = [np.linalg.norm(out[i] - out[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 0.1, gaps


def test_gp_options_are_checked():
    with pytest.raises(ValueError, match="n_startup_trials"):
        OPTIMIZERS.get("gp")(4, 1, 0, n_startup_trials=0)
    opt = OPTIMIZERS.get("gp")(4, 1, 0, n_startup_trials=3, deterministic_objective=True)
    assert opt.study.sampler._n_startup_trials == 3 and opt.study.sampler._deterministic


def test_gp_window_keeps_the_best_and_the_latest():
    from types import SimpleNamespace

    from evomerge.search.optimizers.gp_window import window

    trials = [SimpleNamespace(number=i, values=[v]) for i, v in enumerate([5, 1, 9, 2, 8, 3, 0, 4])]
    assert window(trials, 8) == set(range(8))
    assert window(trials, 4) == {2, 4, 7, 6}  # the best two (9, 8), then the two latest
    two = [SimpleNamespace(number=i, values=v) for i, v in enumerate([[1, 0], [0, 1], [0, 0], [0.5, 0.5]])]
    assert window(two, 2) & {0, 1, 3} and 3 in window(two, 2)  # a front member, then the latest


def test_a_windowed_gp_stays_seeded_past_its_window(monkeypatch):
    from optuna.trial import TrialState

    from evomerge.search.optimizers import gp_window

    fitted = []  # completed trials the sampler was shown, per proposal past its start-up
    shown = gp_window._WindowView._get_trials

    def spy(self, *args, **kwargs):
        trials = shown(self, *args, **kwargs)
        fitted.append(sum(t.state == TrialState.COMPLETE for t in trials))
        return trials

    monkeypatch.setattr(gp_window._WindowView, "_get_trials", spy)

    def trajectory():
        opt = OPTIMIZERS.get("gp")(3, 1, 0, n_startup_trials=4, max_trials=8)
        seen = []
        for _ in range(14):
            s = opt.ask()
            seen.append(s.x)
            opt.tell(s.id, (fitness(np.concatenate([s.x, [0.9]])),))
        return seen

    a, b = trajectory(), trajectory()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert max(fitted) == 8 and min(fitted) < 8  # never shown more than the window
    with pytest.raises(ValueError, match="max_trials"):
        OPTIMIZERS.get("gp")(3, 1, 0, n_startup_trials=4, max_trials=6)


def test_gp_effort_defaults_by_objectives_and_options_are_checked():
    one, several = OPTIMIZERS.get("gp")(3, 1, 0), OPTIMIZERS.get("gp")(3, 3, 0)
    effort = lambda o: (o._max_trials, o.study.sampler._n_preliminary_samples, o.study.sampler._n_local_search)  # noqa: E731
    assert effort(one) == (200, 2048, 10) and effort(several) == (100, 256, 4)
    given = OPTIMIZERS.get("gp")(3, 3, 0, max_trials=None, acq_samples=512, acq_local_searches=6)
    assert effort(given) == (None, 512, 6)
    with pytest.raises(ValueError, match="acq_samples"):
        OPTIMIZERS.get("gp")(3, 1, 0, acq_samples=0)


def test_gp_with_several_objectives_shows_pending_points_as_lies(monkeypatch):
    from optuna.trial import TrialState

    from evomerge.search.optimizers import gp_window

    shown = []
    real = gp_window._WindowView._get_trials
    def spy(self, *args, **kwargs):  # what the sampler is shown, as it is at the call
        trials = real(self, *args, **kwargs)
        shown.append([(t.number, t.state, bool(t.params), t.values) for t in trials])
        return trials

    monkeypatch.setattr(gp_window._WindowView, "_get_trials", spy)
    opt = OPTIMIZERS.get("gp")(3, 2, 0, n_startup_trials=4)

    def values(x):
        return (-float(np.sum((x - 0.2) ** 2)), -float(np.sum((x - 0.8) ** 2)))

    told = []
    for _ in range(4):
        s = opt.ask()
        told.append(values(s.x))
        opt.tell(s.id, told[-1])
    out = [opt.ask().x for _ in range(3)]  # none told: the later asks see the earlier as lies
    gaps = [np.max(np.abs(a - b)) for i, a in enumerate(out) for b in out[i + 1:]]
    assert min(gaps) > 0.02, f"pending points piled up: {out}"
    last = shown[-1]
    assert not [n for n, state, params, _ in last if state == TrialState.RUNNING and params]
    lies = [values for n, state, _, values in last if n >= 4 and state == TrialState.COMPLETE]
    assert lies == [list(np.min(told, axis=0))] * 2
