from __future__ import annotations

import torch
from eval_helpers import write_task

from evomerge.eval import load_task
from evomerge.eval.loglikelihood import continuation_logprobs

PAIRS = [("add:1+2=", "3"), ("add:1+2=", "12"), ("rev:abc=", "cba"), ("sort:ba=", "ab"), ("kv:a1?a=", "1")]


def manual_logprob(model, tok, ctx: str, cont: str) -> float:
    c = tok(ctx)["input_ids"]
    k = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([c + k])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.log_softmax(-1)[0]
    return sum(logp[len(c) - 1 + i, t].item() for i, t in enumerate(k))


def test_batched_logprobs_equal_one_at_a_time(lm):
    model, tok = lm
    batched = continuation_logprobs(model, tok, PAIRS, batch_size=2)
    for (ctx, cont), got in zip(PAIRS, batched, strict=True):
        assert abs(got - manual_logprob(model, tok, ctx, cont)) < 1e-4


def test_accuracy_follows_the_likeliest_choice(lm, tmp_path):
    model, tok = lm
    rows = []
    for i, prompt in enumerate(["add:1+2=", "rev:abc=", "sort:cab=", "copy:ab=", "len:abc=", "inc:9="]):
        choices = ["1", "22", "abc", "9"]
        scores = [manual_logprob(model, tok, prompt, c) for c in choices]
        best = max(range(4), key=scores.__getitem__)
        worst = min(range(4), key=scores.__getitem__)
        rows.append({"prompt": prompt, "choices": choices, "answer": best if i < 4 else worst})
    path = write_task(
        tmp_path,
        "mc",
        {"type": "loglikelihood", "data": "data/mc/{split}.jsonl"},
        {"search": rows},
    )
    res = load_task(str(path)).evaluate(model, tok)
    assert res.ok, res.error
    assert res.values["acc"] == 4 / 6
    assert 0 <= res.values["acc_norm"] <= 1
    got = res.details["per_example"]
    assert got["indices"] == list(range(6))
    assert got["outcomes"]["acc"] == [1.0] * 4 + [0.0] * 2
    assert sum(got["outcomes"]["acc_norm"]) / 6 == res.values["acc_norm"]


def test_answer_out_of_range_is_a_failed_result_naming_the_file(lm, tmp_path):
    model, tok = lm
    path = write_task(
        tmp_path,
        "mc",
        {"type": "loglikelihood", "data": "data/mc/{split}.jsonl"},
        {"search": [{"prompt": "a=", "choices": ["1", "2"], "answer": 2}]},
    )
    res = load_task(str(path), validate=False).evaluate(model, tok)
    assert not res.ok
    assert "search.jsonl" in res.error and "answer 2" in res.error
