"""`evomerge eval` as a user runs it, on a tiny model saved to disk."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.testing import tiny_char_lm

runner = CliRunner()


def _saved(tmp_path):
    model, tok = tiny_char_lm(seed=2)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_eval_prints_a_table_and_json(tmp_path):
    path = _saved(tmp_path)
    res = runner.invoke(app, ["eval", str(path), "-t", "addition", "-t", "cost", "--fidelity", "8"])
    assert res.exit_code == 0, res.output
    assert "exact_match" in res.output and "params" in res.output
    res = runner.invoke(app, ["eval", str(path), "-t", "addition_mc", "--fidelity", "8", "--json", "--split", "search"])
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.stdout)
    assert out["ok"] and out["n_examples"] == 8 and 0 <= out["values"]["acc"] <= 1


def test_eval_unknown_task_exits_2_with_a_suggestion(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path), "-t", "sortin"])
    assert res.exit_code == 2
    assert "Did you mean: sorting" in res.output


def test_eval_refuses_pickle_only_dirs(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    res = runner.invoke(app, ["eval", str(tmp_path), "-t", "cost"])
    assert res.exit_code == 2 and "safetensors" in res.output
