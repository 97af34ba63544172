from __future__ import annotations

import math

import torch
from eval_helpers import write_task

from evomerge.eval import load_task

TEXT = ["add:12+34=46\n", "rev:abcd=dcba\n", "sort:dcba=abcd\n", "kv:a1b2?b=2\n"] * 12


def test_perplexity_is_exp_of_mean_token_nll(lm, tmp_path):
    model, tok = lm
    path = write_task(
        tmp_path, "ppl", {"type": "perplexity", "data": "data/ppl/{split}.txt", "window": 32}, {"search": TEXT}
    )
    ev = load_task(str(path))
    res = ev.evaluate(model, tok)
    assert res.ok, res.error
    # Reference: each window scored alone with transformers' own loss.
    total, count = 0.0, 0
    for w in ev.windows(tok):
        ids = torch.tensor([w])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total += loss * (len(w) - 1)
        count += len(w) - 1
    assert math.isclose(res.values["perplexity"], math.exp(total / count), rel_tol=1e-4)
    assert ev.objectives()[0].direction == "minimize"
    assert all(len(w) <= 32 for w in ev.windows(tok))


def test_perplexity_fidelity_uses_fewer_windows(lm, tmp_path):
    model, tok = lm
    path = write_task(
        tmp_path, "ppl", {"type": "perplexity", "data": "data/ppl/{split}.txt", "window": 16}, {"search": TEXT}
    )
    ev = load_task(str(path))
    full = ev.evaluate(model, tok)
    part = ev.evaluate(model, tok, fidelity=3)
    assert part.ok and part.n_examples == 3 < full.n_examples
