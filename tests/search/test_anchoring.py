"""Anchor subsets as fidelity levels: calibration first, anchors chosen once, kept on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from evomerge.config.run import RunConfigError
from evomerge.eval.anchors import AnchoredLevel, WeightedSubset
from evomerge.eval.exact_match import ExactMatch
from evomerge.run import resume_search, run_search
from evomerge.search.anchoring import ANCHORS_FILE, CALIBRATION_FILE, Anchoring
from evomerge.search.ledgers.sqlite import SQLiteLedger as Ledger
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _examples(indices, outcomes):
    return {"indices": list(indices), "outcomes": {"exact_match": list(outcomes)}}


def test_anchors_are_chosen_when_every_calibration_trial_is_in_and_again_on_resume(tmp_path):
    rng = np.random.default_rng(0)
    columns = list(range(100, 140))  # the top level's examples (split indices)
    rows = {n: (rng.random(40) < 0.3 + 0.1 * n).astype(float) for n in range(4)}
    first = Anchoring(tmp_path, 4, (8, 16, 40), seed=3, log=lambda s: None)
    for n in (2, 0, 3):  # completion order is not trial order
        first.save(n, {"add": _examples(columns, rows[n])})
        first.finished_trial(n)
    assert first.by_rung is None and first.waiting(4) and not first.waiting(3)
    first.finished_trial(1)  # a failure: finished, no outcomes
    assert first.fidelity(2, 40) == 40  # the top level stays as it is
    level0 = first.fidelity(0, 8)
    assert isinstance(level0, AnchoredLevel) and level0.level == 8
    subset = level0.for_task("add")
    assert len(subset.indices) == 8 and set(subset.indices) <= set(columns)
    assert subset.weights.sum() + subset.fixed_share == pytest.approx(1.0)
    assert level0.for_task("other") == 8  # a task without outcomes keeps random examples
    assert set(first.fidelity(0, 8).for_task("add").indices) <= set(first.fidelity(1, 16).for_task("add").indices)
    saved = json.loads((tmp_path / ANCHORS_FILE).read_text())
    assert saved["calibration_trials"] == [0, 2, 3]
    assert saved["tasks"]["add"]["levels"]["8"]["indices"] == subset.indices.tolist()

    again = Anchoring(tmp_path, 4, (8, 16, 40), seed=3, log=lambda s: None)  # a resume: rows from the file
    for n in range(4):
        again.finished_trial(n)
    assert np.array_equal(again.fidelity(0, 8).for_task("add").indices, subset.indices)
    assert np.allclose(again.fidelity(0, 8).for_task("add").weights, subset.weights)


def test_too_few_calibration_outcomes_keep_random_levels(tmp_path):
    logs = []
    a = Anchoring(tmp_path, 2, (4, 8), seed=0, log=logs.append)
    a.save(0, {"add": _examples(range(8), [1, 0] * 4)})
    a.finished_trial(0)
    a.finished_trial(1)
    assert a.fidelity(0, 4) == 4 and not a.waiting(5) and "random" in logs[-1]


def test_an_exact_match_task_scores_a_weighted_subset(zoo):
    from evomerge.eval import load_task
    from evomerge.io.hf import load_causal_lm

    task = load_task("addition", split="search", fitness=True)
    model, tok = load_causal_lm(zoo / "add")
    full = task.evaluate(model, tok, 16)
    hits = dict(zip(full.details["per_example"]["indices"], full.details["per_example"]["outcomes"]["exact_match"],
                    strict=True))
    picked = np.array(sorted(hits)[:4][::-1])  # any order of examples
    weights = np.array([0.1, 0.2, 0.3, 0.15])
    res = task.evaluate(model, tok, WeightedSubset(picked, weights, fixed_share=0.25, fixed_value=1.0))
    assert res.ok and res.n_examples == 4 and res.fidelity == 4
    assert res.values["exact_match"] == pytest.approx(weights @ [hits[i] for i in picked] + 0.25)


def _run(tmp_path, zoo, **over):
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.0, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run = {"space": "space.yaml", "objectives": [{"task": "addition"}], "optimizer": {"name": "random"},
           "budget": {"trials": 10}, "multi_fidelity": {"levels": [2, 4, 8], "eta": 2, "bracket": 4,
                                                        "subsets": "anchors", "calibration": 3},
           "tracking": {"enabled": False}, **over}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def test_a_search_calibrates_at_the_top_then_scores_anchors_below_it(tmp_path, zoo, monkeypatch):
    seen = []
    real = ExactMatch.evaluate
    monkeypatch.setattr(ExactMatch, "evaluate", lambda self, m, t, f=None: seen.append(f) or real(self, m, t, f))
    run_search(_run(tmp_path, zoo), tmp_path / "out", log=lambda s: None)
    rows = Ledger(tmp_path / "out" / "ledger.db").evaluations("complete")
    calibration = [r for r in rows if r.trial < 3]
    assert {(r.rung, r.fidelity) for r in calibration} == {(2, 8)}  # alone, at the top level
    assert all(r.trial >= 3 for r in rows if r.rung < 2)
    anchors = json.loads((tmp_path / "out" / ANCHORS_FILE).read_text())
    assert anchors["calibration_trials"] == [0, 1, 2]
    lines = (tmp_path / "out" / CALIBRATION_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["trial"] for line in lines) == [0, 1, 2]
    below = [f for f in seen if isinstance(f, WeightedSubset)]
    assert len(below) == sum(r.rung < 2 for r in rows) > 0  # every lower-level evaluation
    assert {len(f.indices) for f in below} == {2, 4}
    assert all(f.indices.tolist() == anchors["tasks"]["addition"]["levels"][str(len(f.indices))]["indices"]
               for f in below)


def test_a_resumed_anchored_search_follows_the_uninterrupted_one(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, optimizer={"name": "cmaes", "options": {"popsize": 4}}, budget={"trials": 12})
    run_search(cfg, tmp_path / "whole", log=lambda s: None)
    run_search(cfg, tmp_path / "split", trials=2, log=lambda s: None)  # stops inside the calibration
    assert not (tmp_path / "split" / ANCHORS_FILE).exists()
    resume_search(tmp_path / "split", log=lambda s: None)

    def trace(d):
        return [(r.recipe_hash, r.fidelity, r.scores) for r in Ledger(d / "ledger.db").evaluations("complete")]

    assert trace(tmp_path / "split") == trace(tmp_path / "whole")
    assert (tmp_path / "split" / ANCHORS_FILE).read_text() == (tmp_path / "whole" / ANCHORS_FILE).read_text()


def test_anchors_need_a_task_with_per_example_outcomes(tmp_path, zoo):
    cfg = _run(tmp_path, zoo, objectives=[{"task": "cost", "metric": "params"}])
    with pytest.raises(RunConfigError, match=r"multi_fidelity.subsets: anchors needs a task"):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_calibration_starts_with_the_sources_unless_priors_are_off(tmp_path, zoo):
    def first_weights(d):
        rows = sorted(Ledger(d / "ledger.db").evaluations("complete"), key=lambda r: r.trial)
        return [[m["parameters"]["weight"] for m in yaml.safe_load(r.recipe)["models"]] for r in rows[:3]]

    run_search(_run(tmp_path, zoo, budget={"trials": 4}), tmp_path / "auto", log=lambda s: None)
    assert first_weights(tmp_path / "auto") == [[0.5, 0.5], [1.0, 1.0], [1.0, 0.0]]  # average, sum, add alone
    run_search(_run(tmp_path, zoo, budget={"trials": 4}, priors="none"), tmp_path / "none", log=lambda s: None)
    assert first_weights(tmp_path / "none") != first_weights(tmp_path / "auto")
