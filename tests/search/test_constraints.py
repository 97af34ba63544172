"""Constraints in a search: config, judging, the optimisers' view, best/front/export, resume, MLflow."""

from __future__ import annotations

import math

import pytest
import yaml
from run_helpers import evaluations, write_run
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config.run import RunConfig, RunConfigError
from evomerge.errors import EvomergeError
from evomerge.run import prepare, resume_search, run_search
from evomerge.search.constraints import BoundConstraint, feasible, told_values, violations
from evomerge.search.fidelity import rank
from evomerge.search.front import run_front
from evomerge.search.optimizers.cmaes import CMAES, penalised
from evomerge.search.progress import Progress, format_progress
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo

PPL = "zoo_text/perplexity"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _load(tmp_path, constraints):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"space": "s.yaml", "objectives": [{"task": "cost"}], "constraints": constraints}))
    return RunConfig.load(path)


# --- the config -------------------------------------------------------------------------


def test_the_string_form_is_sugar_for_the_mapping(tmp_path):
    config = _load(tmp_path, ["cost/params <= 7e9", "addition/exact_match>=0.5",
                              {"metric": "cost/layers", "max": 12}])
    assert [(c.metric, c.max, c.min) for c in config.constraints] == [
        ("cost/params", 7e9, None), ("addition/exact_match", None, 0.5), ("cost/layers", 12, None)]
    assert str(config.constraints[1]) == "addition/exact_match >= 0.5"


@pytest.mark.parametrize("bad, message", [
    ("cost/params < 7e9", r"constraints\.0: 'cost/params < 7e9' is not a constraint; write 'METRIC <= NUMBER'"),
    ("cost/params <= lots", r"constraints\.0: 'cost/params <= lots' is not a constraint"),
    ({"metric": "params", "max": 1}, r"constraints\.0\.metric: 'params' does not name a task's metric; write task/metric"),
    ({"metric": "cost/params"}, r"constraints\.0: a constraint on cost/params has exactly one of max or min"),
    ({"metric": "cost/params", "max": 2, "min": 1}, r"exactly one of max or min \(a range is two constraints"),
    ({"metric": "cost/params", "max": 1, "maxx": 2}, r"constraints\.0\.maxx: unknown field; did you mean 'max'"),
])
def test_bad_constraints_name_the_field_and_the_fix(tmp_path, bad, message):
    with pytest.raises(RunConfigError, match=message):
        _load(tmp_path, [bad])


def test_two_bounds_of_one_kind_on_one_metric_are_refused(tmp_path):
    with pytest.raises(RunConfigError, match=r"constraints: cost/params has 2 max bounds \(7e\+09, 5e\+09\); keep the tighter one"):
        _load(tmp_path, ["cost/params <= 7e9", {"metric": "cost/params", "max": 5e9}])
    _load(tmp_path, ["cost/params <= 7e9", "cost/params >= 1e9"])  # a range is fine


def test_binding_adds_the_task_a_constraint_needs_and_refuses_unknown_metrics(tmp_path, zoo):
    cfg = write_run(tmp_path, zoo, constraints=["addition/exact_match >= 0.5"])
    p = prepare(RunConfig.load(cfg), cfg)
    assert [t.name for t in p.tasks] == ["zoo_text", "addition"]  # evaluated although not an objective
    assert p.constraints == [BoundConstraint("addition/exact_match", "min", 0.5, any_fidelity=False)]
    cfg = write_run(tmp_path, zoo, constraints=["cost/latency_ms_per_token <= 1e6", "cost/params <= 1e9"])
    p = prepare(RunConfig.load(cfg), cfg)
    assert [t.name for t in p.tasks] == ["zoo_text", "cost"] and p.tasks[1].ref == "cost_latency"
    assert all(c.any_fidelity for c in p.constraints)
    for bad, message in [("addition/accuracy >= 1", r"constraints\[0\]: task 'addition' has no metric 'accuracy' "
                                                     r"\(it has exact_match\)"),
                         ("additon/exact_match >= 1", r"constraints\[0\] .*Unknown task 'additon'\. Did you mean: addition")]:
        cfg = write_run(tmp_path, zoo, constraints=[bad])
        with pytest.raises(RunConfigError, match=message):
            prepare(RunConfig.load(cfg), cfg)


# --- judging ----------------------------------------------------------------------------


def test_violations_are_amounts_over_the_bound_and_told_values_are_relative():
    size = BoundConstraint("cost/params", "max", 100.0, any_fidelity=True)
    skill = BoundConstraint("add/em", "min", 0.5)
    scores = {"cost/params": 130.0, "add/em": 0.75}
    assert violations(scores, [size, skill]) == {"violation/cost/params/max": 30.0, "violation/add/em/min": 0.0}
    assert violations(scores, [size, skill], top=False) == {"violation/cost/params/max": 30.0}
    assert told_values(scores, [size, skill]) == pytest.approx((0.3, -0.5))
    assert not feasible(scores, [size, skill]) and feasible({**scores, "cost/params": 100.0}, [size, skill])
    zero = BoundConstraint("x/y", "max", 0.0)
    assert zero.told(0.25) == 0.25  # a bound of 0 divides by 1


def test_promotion_ranks_feasible_trials_first_then_by_violation():
    points = [(5.0, 5.0), (1.0, 1.0), (9.0, 9.0), (3.0, 3.0)]
    assert rank(list("abcd"), points) == [2, 0, 3, 1]
    assert rank(list("abcd"), points, [0.0, 0.0, 0.4, 0.1]) == [0, 1, 3, 2]


def test_cmaes_penalty_puts_infeasible_below_feasible_and_failed_last():
    told = [(1.0, 0.0), (3.0, 0.0), (5.0, 0.5), (None, 0.0), (2.0, 2.0), (float("nan"), 0.0)]
    # worst finite value 1.0; infeasible: 1 - 0.5 and 1 - 2; failed: 1 below the lowest (-1).
    assert penalised(told) == [1.0, 3.0, 0.5, -2.0, -1.0, -2.0]
    assert penalised([(4.0, 0.0), (None, 0.0)]) == [4.0, 3.0]  # unconstrained: as before


def test_cmaes_tells_pycma_the_penalised_generation():
    opt = CMAES(2, seed=0, popsize=4)
    opt.expect_constraints(1)
    seen = {}
    real = opt.es.tell
    opt.es.tell = lambda xs, f: (seen.setdefault("f", list(f)), real(xs, f))
    out = [opt.ask() for _ in range(4)]
    for s, (v, c) in zip(out, [(0.9, 0.3), (0.2, -1.0), (0.5, -0.1), (0.1, 0.0)], strict=True):
        opt.tell(s.id, (v,), constraints=(c,))
    # pycma minimises: the infeasible 0.9 (violation 0.3) becomes 0.1 - 0.3 = -0.2.
    assert seen["f"] == pytest.approx([0.2, -0.2, -0.5, -0.1])


# --- the Optuna samplers ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp"])
def test_optuna_samplers_hold_the_constraints_on_the_trial(name):
    from evomerge.search.optimizers import OPTIMIZERS

    opt = OPTIMIZERS.get(name)(2, 1, 0)
    opt.expect_constraints(2)
    s = opt.ask()
    opt.tell(s.id, (0.5,), constraints=(0.25, -1.0))
    trial = opt.study.trials[0]
    assert trial.constraints == {"0": 0.25, "1": -1.0}
    assert trial.system_attrs["constraints:0"] == 0.25


def test_the_optuna_4_path_goes_through_constraints_func(monkeypatch):
    import warnings

    from evomerge.search.optimizers import optuna_samplers

    monkeypatch.setattr(optuna_samplers, "_set_constraint_api", lambda: False)
    opt = optuna_samplers.TPE(2, 1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Optuna 5 deprecates constraints_func
        opt.expect_constraints(1)
    assert opt.study.sampler._constraints_func is optuna_samplers._told_constraints
    for value, c in [(0.5, 0.2), (0.7, -0.3)]:
        s = opt.ask()
        opt.tell(s.id, (value,), constraints=(c,))
    # after_trial called constraints_func and stored its values where Optuna's samplers look.
    assert [t.system_attrs["constraints"] for t in opt.study.trials] == [(0.2,), (-0.3,)]


def test_a_constrained_search_tells_the_sampler(tmp_path, zoo, monkeypatch):
    import evomerge.run as run_module

    kept = {}
    real = run_module.prepare
    monkeypatch.setattr(run_module, "prepare", lambda c, p: kept.setdefault("p", real(c, p)))
    cfg = write_run(tmp_path, zoo, optimizer={"name": "tpe"}, budget={"trials": 4},
                    constraints=["addition/exact_match >= 0.5"])
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    by_trial = {e.trial: e for e in evaluations(tmp_path / "run")}
    for t in kept["p"].optimizer.study.trials:
        em = by_trial[t.number].scores["addition/exact_match"]
        assert t.constraints == {"0": pytest.approx((0.5 - em) / 0.5)}


# --- a search where a constraint excludes the best recipe -------------------------------


def _bound_excluding_the_best(tmp_path, zoo, **over):
    """A run's config, and that of the same run constrained so its unconstrained best (lowest
    perplexity) is infeasible: perplexity >= a value just above the best one."""
    cfg = write_run(tmp_path, zoo, "free", budget={"trials": 6}, **over)
    free = run_search(cfg, tmp_path / "free", log=lambda s: None)
    scores = sorted(e.scores[PPL] for e in evaluations(tmp_path / "free"))
    assert scores[0] < scores[1]
    bound = (scores[0] + scores[1]) / 2
    cfg = write_run(tmp_path, zoo, "constrained", budget={"trials": 6}, constraints=[f"{PPL} >= {bound!r}"], **over)
    return free, cfg, bound


def test_a_constraint_excludes_the_otherwise_best_from_best_front_and_export(tmp_path, zoo):
    free, cfg, bound = _bound_excluding_the_best(tmp_path, zoo)
    logs: list[str] = []
    result = run_search(cfg, tmp_path / "run", log=logs.append)
    rows = {e.trial: e for e in evaluations(tmp_path / "run")}
    assert result.best_trial != free.best_trial and result.infeasible == 1
    infeasible = rows[free.best_trial]  # random search proposes the same trials either way
    assert infeasible.scores[f"violation/{PPL}/min"] == pytest.approx(bound - infeasible.scores[PPL])
    assert all(e.scores[f"violation/{PPL}/min"] == 0 for t, e in rows.items() if t != free.best_trial)
    assert any(f"trial {free.best_trial}: infeasible ({PPL} >= " in line for line in logs)
    feasible_best = min((e for e in rows.values() if e.scores[PPL] >= bound), key=lambda e: e.scores[PPL])
    assert result.best_trial == feasible_best.trial
    _, front, _, _ = run_front(tmp_path / "run")
    assert [e.trial for e in front] == [feasible_best.trial]

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0 and f"trial {feasible_best.trial}" in res.stdout, res.output
    assert "It meets the run's constraints" in (tmp_path / "m" / "README.md").read_text()
    args = ["export", str(tmp_path / "run"), "--trial", str(free.best_trial), "--out", str(tmp_path / "x")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "is infeasible" in res.output and "--allow-infeasible" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(app, [*args, "--allow-infeasible"])
    assert res.exit_code == 0, res.output
    assert "It misses the run's constraints" in (tmp_path / "x" / "README.md").read_text()


def test_no_feasible_trial_means_no_best_an_empty_front_and_a_refused_export(tmp_path, zoo):
    cfg = write_run(tmp_path, zoo, constraints=["zoo_text/perplexity <= 1e-9"])
    result = run_search(cfg, tmp_path / "run", log=lambda s: None)
    assert result.best_trial is None and result.infeasible == result.trials == 4
    assert run_front(tmp_path / "run")[1] == []
    with pytest.raises(EvomergeError, match="No trial of .* meets the run's constraints"):
        from evomerge.search.export import export_trial

        export_trial(tmp_path / "run", tmp_path / "m")


def test_progress_shows_the_infeasible_count():
    p = Progress(trials=3, budget=5, evaluations=3, in_flight=0, best_fitness=-2.0, best_trial=1,
                 front_size=1, elapsed=3.0, eta=2.0, infeasible=2)
    assert "| front 1 | 2 infeasible |" in format_progress(p)
    assert "infeasible" not in format_progress(Progress(**{**p.__dict__, "infeasible": 0}))


@pytest.mark.parametrize("optimizer", ["cmaes", "tpe"])
def test_resume_of_a_constrained_search_follows_the_same_trajectory(tmp_path, zoo, optimizer):
    options = {"popsize": 3} if optimizer == "cmaes" else {}
    cfg = write_run(tmp_path, zoo, optimizer={"name": optimizer, "options": options}, budget={"trials": 6},
                    constraints=["addition/exact_match >= 0.25", "cost/params <= 1e12"])
    whole = run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=3, log=lambda s: None)
    split = resume_search(tmp_path / "split", log=lambda s: None)
    a, b = evaluations(tmp_path / "whole"), evaluations(tmp_path / "split")
    assert [e.recipe_hash for e in a] == [e.recipe_hash for e in b]
    assert [e.scores["violation/addition/exact_match/min"] for e in a] == \
        [e.scores["violation/addition/exact_match/min"] for e in b]
    assert (whole.best_trial, whole.infeasible) == (split.best_trial, split.infeasible)


def test_multi_fidelity_judges_task_metrics_at_the_top_rung_only(tmp_path, zoo):
    cfg = write_run(tmp_path, zoo, fidelity=None, budget={"trials": 4},
                    multi_fidelity={"levels": [2, 4], "eta": 2, "bracket": 4},
                    constraints=["addition/exact_match >= 0.5", "cost/layers <= 1"])
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    rows = evaluations(tmp_path / "run")
    low = [e for e in rows if e.rung == 0]
    top = [e for e in rows if e.rung == 1]
    assert len(low) == 4 and len(top) == 2
    # The zoo's models have 2 layers: every trial misses the cost bound, at every rung.
    assert all(e.scores["violation/cost/layers/max"] == 1.0 for e in rows)
    assert all("violation/addition/exact_match/min" not in e.scores for e in low)
    assert all("violation/addition/exact_match/min" in e.scores for e in top)


# --- the cost metrics -------------------------------------------------------------------


def test_latency_is_a_positive_median_with_its_spread(zoo):
    from evomerge.eval.cost import LATENCY_REPEATS, measure_latency
    from evomerge.io.hf import load_causal_lm

    model, _ = load_causal_lm(zoo / "base")
    out = measure_latency(model)
    assert 0 < out["latency_ms_per_token_min"] <= out["latency_ms_per_token"] <= out["latency_ms_per_token_max"]
    assert math.isfinite(out["latency_ms_per_token_max"]) and LATENCY_REPEATS >= 5


def test_a_latency_constraint_scores_latency_and_bytes_at_the_output_dtype(tmp_path, zoo):
    cfg = write_run(tmp_path, zoo, budget={"trials": 2}, constraints=["cost/latency_ms_per_token <= 1e6"])
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    for e in evaluations(tmp_path / "run"):
        s = e.scores
        assert s["cost/latency_ms_per_token_min"] <= s["cost/latency_ms_per_token"] <= s["cost/latency_ms_per_token_max"]
        assert s["violation/cost/latency_ms_per_token/max"] == 0
        # The zoo's sources are float32 and the recipes name no dtype: 4 bytes a parameter,
        # as the exported files would hold them (the tied head counted once).
        assert s["cost/bytes"] == 4 * s["cost/params"]


def test_bytes_follow_what_the_worker_says_the_output_holds():
    from evomerge.eval.cost import model_costs, set_output_bytes
    from evomerge.testing import tiny_char_lm

    model, _ = tiny_char_lm(layers=2, hidden=32, tied=True)
    held = model_costs(model)
    set_output_bytes(model, int(held["params"]) * 2)  # e.g. a bfloat16 out_dtype
    assert model_costs(model)["bytes"] == 2 * held["params"] == held["bytes"] / 2


# --- MLflow -----------------------------------------------------------------------------


def test_mlflow_logs_each_violation_and_tags_feasibility(tmp_path, zoo):
    from mlflow import MlflowClient

    cfg = write_run(tmp_path, zoo, budget={"trials": 3}, tracking={"enabled": True},
                    constraints=[f"{PPL} <= 1e-9"])
    run_search(cfg, tmp_path / "run", log=lambda s: None)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("run")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3
    for r in children:
        assert r.data.metrics[f"violation/{PPL}/max"] > 0 and r.data.tags["feasible"] == "false"
        assert "pareto" not in r.data.tags or r.data.tags["pareto"] == "false"
