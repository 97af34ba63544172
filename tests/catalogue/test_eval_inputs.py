"""Bad inputs to ``evomerge eval`` (issue 15's catalogue, the checkpoint side).

Entries, one test each, through the real command line (exit 2, one paragraph naming the
model directory and the fix, no traceback, the model directory left as it was):

11. a model whose config needs its own code (``auto_map``) without ``--trust-remote-code``;
15. a model directory without a tokenizer (was a raw transformers traceback);
1.  a model directory without weights (eval's side of entry 1);
3.  a truncated safetensors file (eval's side of entry 3: was "unexpected SafetensorError ...
    This is a bug in evomerge", from Transformers' loader).
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
