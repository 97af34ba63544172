"""lq-CMA-ES in ask/tell form: pycma's own surrogate loop, step for step, and what ask/tell adds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from evomerge.search.optimizers import OPTIMIZERS

TARGET = np.array([0.2, 0.7, 0.35, 0.9, 0.1, 0.6])


def cost(x) -> float:
    """To minimise: a sphere with a kink in the first gene (not a pure quadratic)."""
    x = np.asarray(x)
    return float(np.sum((x - TARGET) ** 2) + 0.3 * abs(x[0] - TARGET[0]))


def drive(opt, budget: int) -> list[np.ndarray]:
    """Ask and tell at once (values to maximise), ``budget`` times."""
    seen = []
    while len(seen) < budget:
        s = opt.ask()
        assert s is not None, "held back with nothing outstanding"
        seen.append(np.array(s.x))
        opt.tell(s.id, (-cost(s.x),))
    return seen


@pytest.mark.parametrize("seed", [0, 1])
def test_same_evaluations_as_pycmas_fmin_lq_surr2(seed):
    import cma

    theirs = []

    def f(x):
        theirs.append(np.array(x))
        return cost(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cma.fmin_lq_surr2(f, [0.5] * 6, 0.25, {"bounds": [0, 1], "seed": seed + 1, "verbose": -9,
                                               "maxfevals": 100, "popsize": 9})
        ours = drive(OPTIMIZERS.get("lq_cmaes")(6, 1, seed), len(theirs))
    assert len(theirs) >= 100
    for i, (a, b) in enumerate(zip(theirs, ours, strict=True)):
        np.testing.assert_allclose(b, a, err_msg=f"evaluation {i} differs from pycma's")


def test_the_model_saves_evaluations_on_a_smooth_function():
    def evals_to(name: str, target: float) -> int:
        opt = OPTIMIZERS.get(name)(6, 1, 3)
        for n in range(1, 2000):
            s = opt.ask()
            c = float(np.sum((np.asarray(s.x) - TARGET) ** 2))
            opt.tell(s.id, (-c,))
            if c < target:
                return n
        return 2000

    lq = OPTIMIZERS.get("lq_cmaes")(6, 1, 3)
    drive(lq, 60)
    assert lq.evaluations_saved > 60, "the model ranked too few members alone"
    assert evals_to("lq_cmaes", 1e-8) * 3 < evals_to("cmaes", 1e-8)


def test_synchronous_rounds_wait_and_asynchronous_ones_hand_out_the_rest():
    sync = OPTIMIZERS.get("lq_cmaes")(6, 1, 0)
    first = []
    while (s := sync.ask()) is not None:
        first.append(s)
    assert len(first) == 5  # pycma's first round: 1 + 3 / truncation_ratio, with no model yet
    asyn = OPTIMIZERS.get("lq_cmaes")(6, 1, 0, asynchronous=True)
    out = []
    while (s := asyn.ask()) is not None:
        out.append(s)
    assert len(out) == asyn.es.popsize  # the whole generation, nobody idle
    np.testing.assert_allclose([s.x for s in out[:5]], [s.x for s in first])
    for s in reversed(out):  # any order; the generation closes when its tau check passes
        asyn.tell(s.id, (-cost(s.x),))
    assert asyn.ask() is not None
    assert asyn.model.size == len(out)  # members told after the generation closed teach the model


def test_min_batch_keeps_workers_busy_and_failures_are_ranked_last():
    opt = OPTIMIZERS.get("lq_cmaes")(6, 1, 0, min_batch=7)
    first = []
    while (s := opt.ask()) is not None:
        first.append(s)
    assert len(first) == 7
    for i, s in enumerate(first):
        opt.tell(s.id, None if i == 0 else (-cost(s.x),), constraints=(1.0,) if i == 1 else (-1.0,))
    assert opt.model.size == 5  # the failed and the infeasible trial are not in the model
    drive(opt, 30)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="min_batch"):
        OPTIMIZERS.get("lq_cmaes")(4, 1, 0, min_batch=0)
    with pytest.raises(ValueError, match="tau"):
        OPTIMIZERS.get("lq_cmaes")(4, 1, 0, tau_threshold=2)
