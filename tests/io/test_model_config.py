"""layer_count: the one reader of a config's depth (plan, resident model, search spaces)."""

from __future__ import annotations

from types import SimpleNamespace

from evomerge.io.model_config import layer_count


def test_first_key_that_holds_an_integer():
    assert layer_count({"num_hidden_layers": 4, "n_layer": 9}) == ("num_hidden_layers", 4)
    assert layer_count({"n_layer": 6}) == ("n_layer", 6)
    assert layer_count({"num_layers": 3, "num_hidden_layers": None}) == ("num_layers", 3)


def test_multimodal_config_keeps_the_decoder_under_text_config():
    config = {"vision_config": {"num_hidden_layers": 24}, "text_config": {"num_hidden_layers": 32}}
    assert layer_count(config) == ("text_config.num_hidden_layers", 32)


def test_none_when_no_count():
    assert layer_count({"hidden_size": 8}) is None
    assert layer_count({"text_config": {"hidden_size": 8}}) is None


def test_reads_config_objects_too():
    assert layer_count(SimpleNamespace(n_layer=2)) == ("n_layer", 2)
