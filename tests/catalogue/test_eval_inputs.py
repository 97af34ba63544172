"""Bad inputs to ``evomerge eval`` (issue 15's catalogue, the checkpoint side).

Entries, one test each, through the real command line (exit 2, one paragraph naming the
model directory and the fix, no traceback, the model directory left as it was):

11. a model whose config needs its own code (``auto_map``) without ``--trust-remote-code``;
15. a model directory without a tokenizer (was a raw transformers traceback);
1.  a model directory without weights (eval's side of entry 1);
3.  a truncated safetensors file (eval's side of entry 3: was "unexpected SafetensorError ...
    This is a bug in evomerge", from Transformers' loader);
13c. ``--output`` (the lm-eval results file) under a missing directory, not ``*.json``, a
    directory, or an existing JSON file that is not a results file (refused before any scoring,
    nothing written or replaced).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_refused, assert_untouched, invoke, snapshot

from evomerge.testing import tiny_char_lm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny, complete model directory (safetensors, config, tokenizer)."""
    out = tmp_path_factory.mktemp("model") / "model"
    model, tokenizer = tiny_char_lm(layers=1)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def _copy(model_dir: Path, tmp_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    for f in model_dir.iterdir():
        if f.name not in without:
            (out / f.name).write_bytes(f.read_bytes())
    return out


def evaluate(model: Path, *extra):
    return invoke("eval", model, "--task", "addition", "--fidelity", "2", "--split", "search", *extra)


def test_a_complete_model_scores(model_dir):
    result = evaluate(model_dir)
    assert result.exit_code == 0, result.output


def test_11_remote_code_needs_the_flag(model_dir, tmp_path):
    model = _copy(model_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_custom.py").write_text("open('PWNED', 'w').write('x')\n")
    before = snapshot(model)
    assert_refused(evaluate(model), str(model), "auto_map", "modeling_custom.CustomForCausalLM",
                   "--trust-remote-code")
    assert_untouched(model, before)
    assert not Path("PWNED").exists()


def test_15_model_without_tokenizer(model_dir, tmp_path):
    model = _copy(model_dir, tmp_path, without=("tokenizer.json", "tokenizer_config.json",
                                                "special_tokens_map.json"))
    before = snapshot(model)
    assert_refused(evaluate(model), str(model), "no tokenizer", "tokenizer.json", "tokenizer_source")
    assert_untouched(model, before)


def test_01_model_without_weights(model_dir, tmp_path):
    model = _copy(model_dir, tmp_path, without=("model.safetensors",))
    assert_refused(evaluate(model), str(model), "safetensors")


def test_03_truncated_safetensors(model_dir, tmp_path):
    model = _copy(model_dir, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(model)
    message = assert_refused(evaluate(model), str(weights), "truncated", "re-download")
    assert "bug" not in message
    assert_untouched(model, before)


@pytest.mark.parametrize("make, must_name", [
    (lambda d: d / "nowhere" / "results.json", ("does not exist", "mkdir -p")),
    (lambda d: _file(d / "notes.txt", "my notes\n"), ("does not end in .json",)),
    (lambda d: _file(d / "out.json", None), ("is a directory",)),
    (lambda d: _file(d / "config.json", '{"lr": 0.1}'), ("not an lm-eval results file", "left as it is")),
    (lambda d: _file(d / "broken.json", "{not json"), ("not an lm-eval results file",)),
], ids=["missing-directory", "not-json", "a-directory", "other-json", "unreadable-json"])
def test_13c_eval_output_that_cannot_take_a_results_file(model_dir, tmp_path, make, must_name):
    out = make(tmp_path / "here")
    before = snapshot(tmp_path)
    assert_refused(evaluate(model_dir, "--output", out), str(out), "--output", *must_name)
    assert_untouched(tmp_path, before)
    assert not (tmp_path / "here" / "nowhere").exists()


def _file(path: Path, text: str | None) -> Path:
    """``path`` made: a file holding ``text``, or (None) a directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    return path
