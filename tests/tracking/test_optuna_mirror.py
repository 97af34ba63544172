"""The Optuna mirror: what a trial becomes, when it is mirrored, and that mirroring is idempotent
(once at the end or after every completion: the same study; a resumed search: no duplicates)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from optuna_helpers import LEVELS, synthetic_run

from evomerge.config.run import RunConfig, RunConfigError
from evomerge.config.tracking import OptunaMirrorConfig
from evomerge.search.constraints import BoundConstraint
from evomerge.search.front import run_front
from evomerge.search.ledgers import EvaluationRecord, open_ledger
from evomerge.search.objectives import BoundObjective
from evomerge.search.space.base import Gene
from evomerge.tracking.dashboard import open_mirror, update_mirror
from evomerge.tracking.optuna_mirror import TRIAL_KEY, OptunaMirror, open_storage, settled_trials


def _record(id, trial, rung, state="complete", scores=None, error=None, genome=(0.5,)):
    return EvaluationRecord(id=id, trial=trial, rung=rung, recipe_hash=f"h{trial}", genome=list(genome), recipe="",
                            state=state, fidelity=LEVELS[rung], scores=scores, error=error,
                            started=1.0e9 + id, finished=1.0e9 + id + 0.5, seconds=0.5, seq=id)


def _study(run_dir: Path, journal: str = "optuna.journal", name: str = "run") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(run_dir / journal)))


def _content(study: optuna.Study) -> dict[int, tuple]:
    """Each trial's content by evomerge trial (Optuna numbers follow the order of mirroring)."""
    return {t.user_attrs[TRIAL_KEY]: (t.state, t.values, t.params, t.distributions, t.intermediate_values,
                                      json.dumps(t.user_attrs, sort_keys=True), t.system_attrs,
                                      t.datetime_start, t.datetime_complete)
            for t in study.get_trials(deepcopy=False)}


def _completions(run_dir: Path) -> list[EvaluationRecord]:
    ledger = open_ledger(run_dir, readonly=True)
    try:
        return ledger.completions()
    finally:
        ledger.close()


def _mirror(run_dir: Path, journal: str) -> OptunaMirror:
    mirror = open_mirror(run_dir)
    return OptunaMirror(run_dir, mirror.objectives, mirror.genes, mirror.levels,
                        settings=OptunaMirrorConfig(storage=journal))


def test_a_trial_is_mirrored_once_settled():
    s = {"a/m": 0.5}
    records = [
        _record(1, 0, 0, scores=s), _record(2, 1, 0, scores=s), _record(3, 2, 0, "failed", error="oom"),
        _record(4, 0, 1, scores=s),  # trial 0 promoted and scored at the top
        _record(5, 3, 0, "abandoned"), _record(6, 3, 0, scores=s),  # interrupted, run again on resume
        _record(7, 4, 1, scores=s),  # a bracket of one starts at the top
    ]
    live = {t.trial: t.state for t in settled_trials(records, 1, search_over=False)}
    assert live == {0: "complete", 2: "fail", 4: "complete"}  # 1 and 3 wait for their bracket
    over = settled_trials(records, 1, search_over=True)
    assert {t.trial: t.state for t in over} == {0: "complete", 1: "pruned", 2: "fail", 3: "pruned", 4: "complete"}
    assert [r.id for r in over[3].records] == [6]


def test_the_mirror_has_the_front_of_evomerge_front_with_distributions_and_states(tmp_path):
    run_dir = synthetic_run(tmp_path, brackets=4, fail_trials=(1, 4))
    done = update_mirror(open_mirror(run_dir))
    assert (done.added, done.trials, done.study) == (12, 12, "run")
    study = _study(run_dir)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["addition/exact_match", "reversal/exact_match"]
    _, front, _, _ = run_front(run_dir)
    assert {t.user_attrs[TRIAL_KEY] for t in study.best_trials} == {e.trial for e in front}
    states = [t.state for t in study.trials]
    assert (states.count(TrialState.COMPLETE), states.count(TrialState.FAIL), states.count(TrialState.PRUNED)) == (4, 2, 6)
    top = {e.trial: e.scores for e in _completions(run_dir) if e.rung == 1}
    for t in study.trials:
        number = t.user_attrs[TRIAL_KEY]
        assert t.distributions["method"] == CategoricalDistribution(("task_arithmetic", "ties"))
        assert t.distributions["add.density"] == FloatDistribution(0.3, 1.0)
        assert t.params["method"] in ("task_arithmetic", "ties") and 0.3 <= t.params["add.density"] <= 1.0
        assert t.intermediate_values == {}  # two objectives: Optuna takes none
        if t.state == TrialState.COMPLETE:
            assert t.values == [top[number]["addition/exact_match"], top[number]["reversal/exact_match"]]
            assert set(t.user_attrs["scores@4"]) == {"addition/exact_match", "reversal/exact_match", "fitness"}
            assert "scores@2" in t.user_attrs and len(t.user_attrs["evaluations"]) == 2
            assert t.user_attrs["fidelity_reached"] == "4" and len(t.user_attrs["recipe_hash"]) == 16
        elif t.state == TrialState.FAIL:
            assert t.values is None and t.user_attrs["error"] == f"trial {number}: out of memory"
        else:
            assert t.values is None and t.user_attrs["fidelity_reached"] == "2" and "scores@2" in t.user_attrs


def test_mirrored_after_every_completion_or_once_at_the_end_gives_the_same_study(tmp_path):
    run_dir = synthetic_run(tmp_path, brackets=3, open_bracket=True)
    records = _completions(run_dir)
    live = _mirror(run_dir, "live.journal")
    for i in range(1, len(records) + 1):
        live.update(records[:i], search_over=False)
    # Before the search is over, the open bracket's trials and those left behind wait.
    assert {t.state for t in _study(run_dir, "live.journal").trials} == {TrialState.COMPLETE, TrialState.FAIL}
    assert live.update(records, search_over=True) == 8  # the 5 left behind, the open bracket's 3
    once = _mirror(run_dir, "once.journal")
    assert once.update(records, search_over=True) == 12
    assert _content(_study(run_dir, "live.journal")) == _content(_study(run_dir, "once.journal"))
    # Idempotent, also for a writer that did not make the study (a resume, another dashboard).
    assert live.update(records, search_over=True) == 0
    assert _mirror(run_dir, "live.journal").update(records, search_over=True) == 0
    assert len(_study(run_dir, "live.journal").trials) == 12


def test_one_objective_gets_intermediate_values_and_pruned_trials_their_last_level(tmp_path):
    run_dir = synthetic_run(tmp_path, brackets=2, objectives=("zoo_text/perplexity",), fail_trials=())
    update_mirror(open_mirror(run_dir))
    study = _study(run_dir)
    assert study.direction.name == "MINIMIZE"
    by_rung = {(e.trial, e.rung): e.scores["zoo_text/perplexity"] for e in _completions(run_dir)}
    for t in study.trials:
        number = t.user_attrs[TRIAL_KEY]
        assert t.intermediate_values == {r: v for (n, r), v in by_rung.items() if n == number}
        if t.state == TrialState.PRUNED:
            assert t.value == by_rung[(number, 0)]
        else:
            assert t.value == by_rung[(number, 1)] == t.intermediate_values[1]
    _, front, _, _ = run_front(run_dir)
    assert study.best_trial.user_attrs[TRIAL_KEY] == front[0].trial


def test_constraints_integers_and_nan(tmp_path):
    genes = [Gene("method", choices=("a", "b")), Gene("k", 1, 4, integer=True), Gene("w", 0.03, 0.29)]
    size = BoundConstraint("cost/params", "max", 10.0)
    mirror = OptunaMirror(tmp_path, [BoundObjective("t/m", 1.0, 1.0)], genes, (None,), constraints=[size])

    def top(id, value, params, genome=(0.9, 1.0, 1.0)):
        return _record(id, id, 0, scores={"t/m": value, "cost/params": params, size.name: max(0.0, params - 10.0)},
                       genome=genome)

    mirror.update([top(0, 0.9, 12.0), top(1, 0.5, 8.0), top(2, float("nan"), 8.0)], search_over=True)
    study = optuna.load_study(study_name=tmp_path.name, storage=open_storage(str(tmp_path / "optuna.journal")))
    t0, t1, t2 = study.trials
    assert t0.params == {"method": "b", "k": 4, "w": 0.29}  # clamped: 0.03 + 1.0 * 0.26 rounds past 0.29
    assert t0.distributions["k"] == IntDistribution(1, 4) and t0.distributions["w"] == FloatDistribution(0.03, 0.29)
    assert t0.system_attrs == {"constraints:cost/params/max": 2.0}
    assert t0.constraints == {"cost/params/max": 2.0} and t1.constraints == {"cost/params/max": 0.0}
    assert study.best_trials == [t1]  # the better trial misses its constraint, as in `evomerge front`
    assert t2.state == TrialState.FAIL and "is nan" in t2.user_attrs["error"] and t2.values is None
    assert math.isnan(t2.user_attrs["scores@2"]["t/m"])


@pytest.mark.parametrize(("optuna_section", "message"), [
    ({"storage": "redis://localhost:6379"}, "redis:// is not a storage the mirror writes to"),
    ({"storage": " "}, "an empty storage"),
    ({"study": ""}, "an empty study name"),
    ({"storage": "x.journal", "sudy": "s"}, "did you mean 'study'"),
])
def test_a_bad_optuna_section_is_refused_at_load(tmp_path, optuna_section, message):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"space": "s.yaml", "objectives": [{"task": "cost"}],
                                "tracking": {"optuna": optuna_section}}))
    with pytest.raises(RunConfigError, match="tracking.optuna") as err:
        RunConfig.load(path)
    assert message in str(err.value)


# -- a real search ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from evomerge.testing import mini_zoo_config
    from evomerge.zoo.build import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def test_a_resume_backfills_the_mirror_and_live_sessions_add_every_trial_once(tmp_path, zoo):
    import yaml
    from run_helpers import write_run

    from evomerge.run import resume_search, run_search

    config = write_run(tmp_path, zoo, objectives=[{"task": "zoo_text"}, {"task": "cost", "metric": "params"}],
                       fidelity=None, multi_fidelity={"levels": [2, 4], "bracket": 3}, budget={"trials": 3})
    run_dir = tmp_path / "run"
    run_search(config, run_dir, log=lambda s: None)  # no mirror yet: one bracket of three trials
    frozen = yaml.safe_load((run_dir / "run.yaml").read_text())
    frozen["tracking"]["optuna"] = {"study": "live"}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(frozen))
    lines: list[str] = []
    resume_search(run_dir, trials=6, log=lines.append)
    assert any("mirrored into Optuna (study 'live')" in line for line in lines), lines
    assert sorted(t.user_attrs[TRIAL_KEY] for t in _study(run_dir, name="live").trials) == list(range(6))
    resume_search(run_dir, trials=9, log=lambda s: None)
    study = _study(run_dir, name="live")
    assert sorted(t.user_attrs[TRIAL_KEY] for t in study.trials) == list(range(9))  # each once
    once = _mirror(run_dir, "once.journal")
    once.study_name = "live"
    once.update(_completions(run_dir), search_over=True)
    assert _content(study) == _content(_study(run_dir, "once.journal", "live"))
    _, front, _, _ = run_front(run_dir)
    assert {t.user_attrs[TRIAL_KEY] for t in study.best_trials} == {e.trial for e in front}
