"""lm-eval on local data, scoring an in-memory model: cross-checked against the built-in evaluator."""

from __future__ import annotations

import pytest
from eval_helpers import write_task

from evomerge.eval import load_task
from evomerge.eval.generate import greedy_generate

PROMPTS = [f"add:{a}+{b}=" for a, b in [(1, 2), (13, 4), (7, 70), (55, 5), (9, 9), (31, 8), (0, 0), (42, 7)]]


@pytest.fixture
def tasks(lm, tmp_path):
    model, tok = lm
    said = greedy_generate(model, tok, PROMPTS, max_new_tokens=4, stop=["\n"])
    rows = [
        {"prompt": p, "answer": s if i % 4 else s + "!"} for i, (p, s) in enumerate(zip(PROMPTS, said, strict=True))
    ]
    data = {"search": rows, "test": rows[:4]}
    write_task(tmp_path, "em", {"type": "exact_match", "data": "data/em/{split}.jsonl", "max_new_tokens": 4}, data)
    lm_yaml = {
        "task": "tiny_add",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"search": "data/em/search.jsonl", "test": "data/em/test.jsonl"}},
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 4},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    write_task(tmp_path, "tiny_add_lm_eval", lm_yaml)
    write_task(tmp_path, "lme", {"type": "lm_eval", "task": "tiny_add_lm_eval.yaml", "batch_size": 8})
    return tmp_path


def test_lm_eval_agrees_with_the_built_in_exact_match(lm, tasks, monkeypatch):
    model, tok = lm
    # No network: any attempt to reach the hub would raise.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    builtin = load_task(str(tasks / "em.yaml")).evaluate(model, tok)
    harness = load_task(str(tasks / "lme.yaml")).evaluate(model, tok)
    assert harness.ok, harness.error
    assert builtin.values["exact_match"] == harness.values["exact_match"] == 0.75
    # A fidelity level scores the same nested subset in both.
    b4 = load_task(str(tasks / "em.yaml")).evaluate(model, tok, fidelity=4)
    h4 = load_task(str(tasks / "lme.yaml")).evaluate(model, tok, fidelity=4)
    assert h4.n_examples == 4 and h4.values == b4.values
    # And the test split is the file for the test split.
    assert load_task(str(tasks / "lme.yaml"), split="test").evaluate(model, tok).n_examples == 4


def test_lm_eval_task_whose_dataset_is_not_cached_offline_is_refused(lm, tmp_path):
    model, tok = lm
    write_task(tmp_path, "hub", {"task": "hub_task", "dataset_path": "evomerge-test/not-cached",
                                 "output_type": "generate_until", "test_split": "test",
                                 "doc_to_text": "{{q}}", "doc_to_target": "{{a}}"})
    write_task(tmp_path, "lme", {"type": "lm_eval", "task": "hub.yaml"})
    with pytest.raises(Exception, match=r"dataset evomerge-test/not-cached cannot be loaded: it is not in "
                                        r"the datasets cache and downloads are off") as e:
        load_task(str(tmp_path / "lme.yaml"))
    assert "datasets.load_dataset('evomerge-test/not-cached')" in str(e.value)
    res = load_task(str(tmp_path / "lme.yaml"), validate=False).evaluate(model, tok)
    assert not res.ok and "not in the datasets cache" in res.error
