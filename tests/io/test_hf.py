"""load_causal_lm / load_model: the one loader of a model (safetensors only, float32, eval mode)."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import CheckpointError
from evomerge.io.hf import load_causal_lm, load_model
from evomerge.testing import tiny_char_lm


def test_loads_model_and_tokenizer_in_eval_mode(tmp_path):
    saved, tok = tiny_char_lm(seed=4)
    saved.to(torch.bfloat16).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tokenizer = load_causal_lm(tmp_path / "m")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tokenizer("12+3=").input_ids == tok("12+3=").input_ids


def test_refuses_a_directory_without_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_causal_lm(tmp_path)


def test_load_model_needs_no_tokenizer(untied_family):
    model = load_model(untied_family["base"], dtype=torch.float64)
    assert not model.training and next(model.parameters()).dtype == torch.float64


def test_loading_draws_no_progress_bar_and_leaves_the_setting_alone(untied_family, capfd):
    from transformers.utils import logging as hf_logging

    load_model(untied_family["base"])
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
