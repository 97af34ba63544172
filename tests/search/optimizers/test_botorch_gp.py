"""The BoTorch GP optimiser (the botorch extra, which `make test` installs): search quality,
pending points, failures, determinism, several objectives, and the error without the extra.

The ask/tell protocol is checked by the optimiser suite (tests/testing/test_suite_optimizers.py).
BoTorch is imported directly, not through importorskip: without the extra these tests fail.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import botorch  # noqa: F401  - the extra must be installed where the tests run
import numpy as np
import pytest
import torch
from optimizer_helpers import run as run_optimizer

from evomerge.errors import EvomergeError
from evomerge.search.optimizers import OPTIMIZERS
from evomerge.search.pareto import hypervolume, pareto_mask
from evomerge.testing.optimizers import two_objectives

OPTIMUM = np.array([0.3, 0.75, 0.5, 0.9, 0.15, 0.6])  # a merge's weights and densities, say


def smooth(x: np.ndarray) -> float:
    """A smooth 6-gene function, largest (0) at OPTIMUM, steeper in some genes than in others."""
    e = np.asarray(x) - OPTIMUM
    return -float(np.sum(np.array([1.0, 2.0, 4.0, 1.0, 3.0, 0.5]) * e * e))


def make(dimension: int = 6, n_objectives: int = 1, seed: int = 0, **options):
    return OPTIMIZERS.get("botorch_gp")(dimension, n_objectives, seed, **options)


run = functools.partial(run_optimizer, dimension=6)  # dimension= overrides it


@pytest.mark.parametrize("seed", [0, 1])
def test_beats_random_search_on_a_smooth_function_at_a_small_budget(seed):
    best = max(v[0] for _, v in run("botorch_gp", smooth, 30, seed, n_startup_trials=8))
    assert best > max(v[0] for _, v in run("random", smooth, 30, seed))
    assert best > -0.1  # random search's best of 30: -0.21 (seeds 0, 1); this: -0.02, -0.05


def test_pending_proposals_spread():
    opt = make(4, n_startup_trials=6)
    for _ in range(6):
        s = opt.ask()
        opt.tell(s.id, (-float(np.sum((s.x - 0.5) ** 2)),))
    out = [opt.ask().x for _ in range(3)]  # none told: each sees the others as pending
    gaps = [np.max(np.abs(a - b)) for i, a in enumerate(out) for b in out[i + 1:]]
    assert min(gaps) > 0.02, f"pending points piled up: {out}"


def test_several_objectives_spread_a_bracket_asked_before_any_tell(monkeypatch):
    from botorch.acquisition.multi_objective import logei

    seen = []  # what qLogEHVI is given: pending points go into the model, not its exponential joint batch
    real = logei.qLogExpectedHypervolumeImprovement.__init__
    monkeypatch.setattr(logei.qLogExpectedHypervolumeImprovement, "__init__",
                        lambda self, *a, **k: seen.append(k.get("X_pending")) or real(self, *a, **k))
    opt = make(4, n_objectives=2, n_startup_trials=6)
    for _ in range(6):
        s = opt.ask()
        opt.tell(s.id, two_objectives(s.x))
    opt.tell(opt.ask().id, None)  # a failure stays pending for good
    seen.clear()
    out = [opt.ask().x for _ in range(9)]
    gaps = [np.max(np.abs(a - b)) for i, a in enumerate(out) for b in out[i + 1:]]
    assert min(gaps) > 0.02, f"pending points piled up: {out}"
    assert len(seen) == 9 and all(p is None for p in seen)


def test_same_seed_same_points_with_pending_and_failures_and_global_rngs_untouched():
    def trajectory(seed: int) -> list[np.ndarray]:
        opt = make(4, seed=seed, n_startup_trials=4)
        seen, out = [], []
        for n in range(10):
            s = opt.ask()
            seen.append(s.x)
            out.append(s)
            if n % 2:  # two out at a time, the older told (every third fails)
                for t in out:
                    opt.tell(t.id, None if n % 3 == 0 else (-float(np.sum((t.x - 0.3) ** 2)),))
                out = []
        return seen

    torch.manual_seed(7)
    np.random.seed(7)
    state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    a = trajectory(3)
    assert torch.equal(torch.random.get_rng_state(), state), "the global torch RNG moved"
    assert np.array_equal(np.random.get_state()[1], np_state), "the global numpy RNG moved"
    torch.manual_seed(99)  # another global state: the same points
    b = trajectory(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[-1], trajectory(4)[-1])


def test_a_failed_point_is_not_proposed_again():
    opt = make(3, n_startup_trials=5)
    for _ in range(5):
        s = opt.ask()
        opt.tell(s.id, (-float(np.sum((s.x - 0.4) ** 2)),))
    first = opt.ask()
    opt.tell(first.id, None)  # no new data: the same model
    again = opt.ask()
    assert np.max(np.abs(again.x - first.x)) > 1e-3
    assert len(opt._x) == 5  # the failure is not in the model


def test_two_objectives_improve_hypervolume_over_random_search():
    ref = np.array([-2.0, -2.0])
    got = {}
    for name in ("botorch_gp", "random"):
        values = np.array([v for _, v in run(name, two_objectives, 20, 0, dimension=4, n_objectives=2,
                                             **({"n_startup_trials": 8} if name == "botorch_gp" else {}))])
        got[name] = hypervolume(values[pareto_mask(values)], ref)
    assert got["botorch_gp"] > got["random"], got


def test_three_objectives_and_constraints_are_modelled():
    def three(x):
        a, b = two_objectives(x)
        return a, b, -float(np.sum((np.asarray(x) - 0.5) ** 2))

    opt = make(4, n_objectives=3, n_startup_trials=4)
    opt.expect_constraints(1)
    for _ in range(7):
        s = opt.ask()
        opt.tell(s.id, three(s.x), constraints=(float(s.x[0]) - 0.6,))
    assert opt._fit().num_outputs == 4  # three objectives and the constraint


def test_the_fit_sees_at_most_max_trials_points():
    opt = make(3, n_startup_trials=12, max_trials=8)
    for _ in range(13):
        s = opt.ask()
        opt.tell(s.id, (float(np.sum(s.x)),))
    X, Y = opt._data()
    assert len(X) == 8 and max(Y[:, 0]) == max(v[0] for v in opt._y)  # the best is kept


def test_options_are_checked():
    with pytest.raises(TypeError, match="popsize"):
        make(popsize=4)
    with pytest.raises(ValueError, match="num_restarts"):
        make(num_restarts=0)
    with pytest.raises(ValueError, match="max_trials"):
        make(max_trials=2)
    with pytest.raises(ValueError, match="raw_samples"):
        make(raw_samples="many")
    one, several = make(), make(n_objectives=3)  # auto: less acquisition search for several objectives
    assert (one.raw_samples, one.acq_maxiter) == (128, 15) and (several.raw_samples, several.acq_maxiter) == (64, 10)


def test_without_the_extra_building_it_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "botorch", None)  # what `import botorch` sees without the extra
    with pytest.raises(EvomergeError, match=r"pip install 'evomerge\[botorch\]'") as err:
        make()
    assert isinstance(err.value, ImportError) and "\n" not in str(err.value)


def test_a_search_without_the_extra_is_refused_before_compute(tmp_path, monkeypatch):
    import yaml

    from evomerge.run import run_search
    from evomerge.testing import mini_zoo_config
    from evomerge.zoo.build import build_zoo

    zoo = build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
        "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.0, "high": 1.0}}}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "space": "space.yaml", "objectives": [{"task": "addition"}], "budget": {"trials": 2},
        "optimizer": {"name": "botorch_gp"}}))
    monkeypatch.setitem(sys.modules, "botorch", None)
    with pytest.raises(EvomergeError, match=r"pip install 'evomerge\[botorch\]'"):
        run_search(tmp_path / "run.yaml", tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_importing_evomerge_and_the_module_does_not_import_botorch():
    code = ("import sys, evomerge, evomerge.search.optimizers.botorch_gp, evomerge.run\n"
            "assert not {'botorch', 'gpytorch'} & set(sys.modules), 'botorch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
