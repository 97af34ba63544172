from __future__ import annotations

import random

import torch
from eval_helpers import write_task

from evomerge.eval import load_task
from evomerge.eval.data import nested_subset
from evomerge.eval.generate import greedy_generate
from evomerge.zoo.skills import SKILLS

PROMPTS = [SKILLS.get("addition").sample(random.Random(i)).prompt for i in range(12)]
PROMPTS += ["rev:ab=", "sort:dcba=", "kv:a1b2?a=", "copy:abcdefgh="]


def hf_greedy(model, tokenizer, prompt: str, n: int) -> str:
    """Reference: transformers' own generate, one prompt at a time, no padding."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(
        ids, max_new_tokens=n, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=0
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return text.split("\n")[0]


def test_batched_greedy_equals_transformers_generate(lm):
    model, tok = lm
    ours = greedy_generate(model, tok, PROMPTS, max_new_tokens=6, stop=["\n"], batch_size=5)
    ref = [hf_greedy(model, tok, p, 6) for p in PROMPTS]
    assert ours == ref
    assert len(set(ref)) > 3  # the random model answers prompts differently


def test_exact_match_scores_the_fraction_of_right_answers(lm, tmp_path):
    model, tok = lm
    ref = [hf_greedy(model, tok, p, 6) for p in PROMPTS]
    # Half the answers are what the model says, half are not: the score must be exactly 1/2.
    rows = [
        {"prompt": p, "answer": r if i % 2 == 0 else r + "x"}
        for i, (p, r) in enumerate(zip(PROMPTS, ref, strict=True))
    ]
    path = write_task(
        tmp_path,
        "em",
        {"type": "exact_match", "data": "data/em/{split}.jsonl", "max_new_tokens": 6},
        {"search": rows, "test": rows[:4]},
    )
    ev = load_task(str(path), split="search")
    res = ev.evaluate(model, tok)
    assert res.ok, res.error
    assert res.values == {"exact_match": 0.5}
    assert res.n_examples == len(rows)
    assert load_task(str(path), split="test").evaluate(model, tok).n_examples == 4


def test_fidelity_scores_a_nested_subset(lm, tmp_path):
    model, tok = lm
    rows = [{"prompt": p, "answer": "?"} for p in PROMPTS]
    path = write_task(
        tmp_path,
        "em",
        {"type": "exact_match", "data": "data/em/{split}.jsonl", "fidelities": [4, 8, 100]},
        {"search": rows},
    )
    ev = load_task(str(path))
    assert ev.fidelity_levels() == [4, 8, None]
    assert ev.cost(4) < ev.cost(8) < ev.cost(None) == len(rows)
    assert ev.evaluate(model, tok, fidelity=4).n_examples == 4


def test_details_hold_each_scored_example_and_its_outcome(lm, tmp_path):
    model, tok = lm
    ref = [hf_greedy(model, tok, p, 6) for p in PROMPTS]
    rows = [{"prompt": p, "answer": r if i % 3 == 0 else "?"}
            for i, (p, r) in enumerate(zip(PROMPTS, ref, strict=True))]
    path = write_task(tmp_path, "em", {"type": "exact_match", "data": "data/em/{split}.jsonl",
                                       "max_new_tokens": 6}, {"search": rows})
    ev = load_task(str(path))
    for fidelity in (5, None):
        res = ev.evaluate(model, tok, fidelity)
        got = res.details["per_example"]
        assert got["indices"] == nested_subset(len(rows), fidelity, 0)
        assert got["outcomes"]["exact_match"] == [float(i % 3 == 0) for i in got["indices"]]
        assert res.values["exact_match"] == sum(got["outcomes"]["exact_match"]) / res.n_examples


def test_nan_logits_are_a_failed_result_not_a_crash(tmp_path):
    from evomerge.testing import tiny_char_lm

    model, tok = tiny_char_lm(seed=1)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    path = write_task(
        tmp_path,
        "em",
        {"type": "exact_match", "data": "data/em/{split}.jsonl"},
        {"search": [{"prompt": "add:1+1=", "answer": "2"}]},
    )
    res = load_task(str(path)).evaluate(model, tok)
    assert not res.ok
    assert "non-finite logits" in res.error
    assert res.values == {}
