"""The real zoo (slow: trains it, ~4 min on 2 cores): experts specialise and merging pays off."""

from __future__ import annotations

import pytest

from evomerge.zoo.build import build_zoo, default_zoo_dir
from evomerge.zoo.report import zoo_report

# `landscape`: not in CI until the zoo is robust across seeds (the zoo issue); `make test-landscape`
pytestmark = [pytest.mark.slow, pytest.mark.landscape]


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


def test_every_shipped_task_scores_a_zoo_model_in_memory(report, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.eval import load_task, task_names

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo = default_zoo_dir()
    model = AutoModelForCausalLM.from_pretrained(zoo / "addition", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(zoo / "addition")
    for name in task_names():
        res = load_task(name, split="test").evaluate(model, tok, fidelity=64)
        assert res.ok, f"{name}: {res.error}"
    # The built-in and the lm-eval path agree, and the specialist beats the base at its skill.
    em = load_task("addition", split="test").evaluate(model, tok).values["exact_match"]
    lm = load_task("addition_lm_eval", split="test").evaluate(model, tok).values["exact_match"]
    assert em == lm > report.row("base").scores["addition"]
