from __future__ import annotations

import pytest
from eval_helpers import write_task

from evomerge.eval import load_task

MODULE = '''
def score(model, tokenizer, fidelity=None):
    return {"layers_seen": len(model.model.layers), "fidelity": -1 if fidelity is None else fidelity}

def broken(model, tokenizer):
    raise RuntimeError("the metric server is down")

def not_a_dict(model, tokenizer):
    return 3.0

def nothing(model, tokenizer):
    return None

def none_value(model, tokenizer):
    return {"layers_seen": None}

def numeric_string(model, tokenizer):
    return {"layers_seen": "0.5"}

def nan_value(model, tokenizer):
    return {"layers_seen": float("nan")}

def list_value(model, tokenizer):
    return {"layers_seen": [1.0, 2.0]}

def tensor_and_numpy_values(model, tokenizer):
    import numpy as np
    import torch
    return {"layers_seen": torch.tensor(2.0), "flag": True, "np": np.float32(0.25), "one": np.array([3])}
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


@pytest.mark.parametrize(("fn", "reason"), [
    ("nothing", "mymetrics:nothing returned NoneType (None), not a dict of values such as {'layers_seen': 0.5}"),
    ("none_value", "mymetrics:none_value returned NoneType for 'layers_seen' (None), not a number"),
    ("numeric_string", "mymetrics:numeric_string returned str for 'layers_seen' ('0.5'), not a number"),
    ("list_value", "mymetrics:list_value returned list for 'layers_seen' ([1.0, 2.0]), not a number"),
    ("nan_value", "non-finite value for layers_seen (nan)"),
])
def test_a_function_returning_a_non_number_fails_naming_the_objective_and_the_type(lm, tmp_path, fn, reason):
    model, tok = lm
    res = _task(tmp_path, fn).evaluate(model, tok)
    assert not res.ok and res.error == reason


def test_one_element_tensors_arrays_and_numpy_scalars_are_numbers(lm, tmp_path):
    model, tok = lm
    res = _task(tmp_path, "tensor_and_numpy_values").evaluate(model, tok)
    assert res.ok and res.values == {"layers_seen": 2.0, "flag": 1.0, "np": 0.25, "one": 3.0}
