from __future__ import annotations

from eval_helpers import write_task

from evomerge.eval import load_task

MODULE = '''
def score(model, tokenizer, fidelity=None):
    return {"layers_seen": len(model.model.layers), "fidelity": -1 if fidelity is None else fidelity}

def broken(model, tokenizer):
    raise RuntimeError("the metric server is down")

def not_a_dict(model, tokenizer):
    return 3.0
'''


def _task(tmp_path, fn: str):
    (tmp_path / "mymetrics.py").write_text(MODULE)
    return load_task(
        str(
            write_task(
                tmp_path,
                fn,
                {
                    "type": "python",
                    "function": f"mymetrics:{fn}",
                    "python_path": ".",
                    "objectives": {"layers_seen": "maximize"},
                },
            )
        )
    )


def test_user_function_values_and_fidelity(lm, tmp_path):
    model, tok = lm
    ev = _task(tmp_path, "score")
    assert ev.evaluate(model, tok).values == {"layers_seen": 2.0, "fidelity": -1.0}
    assert ev.evaluate(model, tok, fidelity=7).values["fidelity"] == 7.0


def test_a_raising_function_is_a_failed_result(lm, tmp_path):
    model, tok = lm
    res = _task(tmp_path, "broken").evaluate(model, tok)
    assert not res.ok
    assert "RuntimeError: the metric server is down" in res.error


def test_a_function_returning_no_dict_is_a_failed_result(lm, tmp_path):
    model, tok = lm
    res = _task(tmp_path, "not_a_dict").evaluate(model, tok)
    assert not res.ok and "not a dict" in res.error
