from __future__ import annotations

from eval_helpers import write_task

from evomerge.eval import load_task
from evomerge.testing import tiny_char_lm


def test_cost_counts_tied_weights_once(tmp_path):
    path = write_task(tmp_path, "cost", {"type": "cost"})
    untied, tok = tiny_char_lm(layers=3, hidden=32, tied=False)
    tied, _ = tiny_char_lm(layers=3, hidden=32, tied=True)
    a = load_task(str(path)).evaluate(untied, tok).values
    b = load_task(str(path)).evaluate(tied, tok).values
    vocab = len(tok)
    assert a["layers"] == b["layers"] == 3
    assert a["params"] - b["params"] == vocab * 32
    assert a["bytes"] == 4 * a["params"]
    assert all(o.direction == "minimize" for o in load_task(str(path)).objectives())
