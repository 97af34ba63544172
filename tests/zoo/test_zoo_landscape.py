"""The real zoo (slow: trains it, ~3 min on 2 cores, then cached): experts specialise and
merging pays.

The landscape checks (marker ``landscape``, ``make test-landscape``) read the zoo report's table
(its searched merge is a random search of the report's own, coarser space). CI checks the zoo
issue's targets on the quickstart instead (tests/test_readme_walkthrough.py), and
benchmarks/zoo_robustness.py and zoo_landscape.py measure them over zoo seeds and thread counts.
The last test runs in CI (``make test-slow``).
"""

from __future__ import annotations

import pytest

from evomerge.zoo.build import build_zoo, default_zoo_dir
from evomerge.zoo.report import zoo_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report():
    zoo = build_zoo(default_zoo_dir(), log=lambda s: None)  # cached after the first build
    return zoo_report(zoo)


@pytest.mark.landscape
def test_every_expert_masters_its_own_skill_and_is_best_at_it(report):
    experts = [r for r in report.rows if r.name in report.skills]
    assert {e.name for e in experts} == {"addition", "reversal", "sorting"}
    for e in experts:
        assert e.scores[e.name] >= 0.9, (e.name, e.scores)
        others = [o.scores[e.name] for o in experts if o is not e]
        assert e.scores[e.name] > max(others)


@pytest.mark.landscape
def test_a_tuned_merge_beats_every_expert_and_the_average_on_the_mean(report):
    tuned = report.row("merge_searched").mean
    assert all(tuned > report.row(s).mean for s in report.skills)
    assert tuned > report.row("average").mean


@pytest.mark.landscape
def test_the_base_is_weak_on_every_hard_skill(report):
    base = report.row("base").scores
    assert all(base[s] <= 0.3 for s in report.skills), base


def test_every_shipped_task_scores_a_zoo_model_in_memory(monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.eval import load_task, task_names

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo = build_zoo(default_zoo_dir(), log=lambda s: None)
    model = AutoModelForCausalLM.from_pretrained(zoo / "addition", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(zoo / "base", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(zoo / "addition")
    for name in task_names():
        res = load_task(name, split="test").evaluate(model, tok, fidelity=64)
        assert res.ok, f"{name}: {res.error}"
    # The built-in and the lm-eval path agree, and the specialist beats the base at its skill.
    em = load_task("addition", split="test").evaluate(model, tok).values["exact_match"]
    lm = load_task("addition_lm_eval", split="test").evaluate(model, tok).values["exact_match"]
    on_base = load_task("addition", split="test").evaluate(base, tok).values["exact_match"]
    assert em == lm > on_base
