"""Model references: paths, Hub ids and ``MODEL+ADAPTER``, resolved and opened."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import CheckpointError
from evomerge.io.sources import load_source_lm, resolve_sources, split_adapter
from evomerge.testing import tiny_char_lm
from evomerge.testing.adapters import make_lora_adapter
from evomerge.testing.hub_cache import put_in_cache


@pytest.mark.parametrize(("ref", "parts"), [
    ("org/base", ("org/base", None)),
    ("org/base+org/lora", ("org/base", "org/lora")),
    ("./base+../lora@v1", ("./base", "../lora@v1")),
])
def test_model_plus_adapter_splits_as_mergekit_splits_it(ref, parts):
    assert split_adapter(ref) == parts


@pytest.mark.parametrize(("ref", "says"), [("org/base+", "nothing follows"), ("+org/lora", "nothing comes before"),
                                           ("a+b+c", "more than one")])
def test_a_malformed_model_plus_adapter_is_refused(ref, says):
    with pytest.raises(CheckpointError, match=says):
        split_adapter(ref)


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("char")
    model, tokenizer = tiny_char_lm(layers=1)
    model.save_pretrained(str(root / "base"))
    tokenizer.save_pretrained(str(root / "base"))
    make_lora_adapter(root / "base", root / "lora", seed=3, scale=0.5)
    return root


def test_a_base_plus_adapter_brings_its_base_in_as_a_source(char_lm):
    ref = f"{char_lm / 'base'}+{char_lm / 'lora'}"
    dirs = resolve_sources([ref])
    assert dirs == {str(char_lm / "base"): char_lm / "base", ref: char_lm / "lora"}


def test_a_scored_adapter_is_peft_merged_model(char_lm, hub_cache):
    import peft
    from transformers import AutoModelForCausalLM

    put_in_cache(hub_cache, "org/base", char_lm / "base")
    put_in_cache(hub_cache, "org/lora", char_lm / "lora")
    model, _ = load_source_lm("org/base+org/lora")
    merged = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(char_lm / "base")), str(char_lm / "lora")).merge_and_unload()
    got, expected = model.state_dict(), merged.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    base, _ = load_source_lm("org/base")
    assert not torch.equal(base.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           got["model.layers.0.self_attn.q_proj.weight"])


def test_evomerge_eval_scores_an_adapter_and_its_base_apart(char_lm):
    from typer.testing import CliRunner

    from evomerge.cli import app

    def score(ref):
        import json

        result = CliRunner().invoke(app, ["eval", ref, "--task", "zoo_text", "--fidelity", "4",
                                          "--split", "search", "--json"])
        assert result.exit_code == 0, result.output
        return [r["values"] for r in json.loads(result.output)]

    assert score(f"{char_lm / 'base'}+{char_lm / 'lora'}") != score(str(char_lm / "base"))
