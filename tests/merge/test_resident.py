"""fit_layers: a resident model reshaped to a recipe's depth behaves as the recipe merged to disk."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from evomerge.merge.engine import merge_to_disk
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.merge.resident import decoder_layers, fit_layers
from evomerge.search.space import LayerSpace

PROMPT = torch.tensor([[1, 5, 9, 14, 3, 22, 7]])


def _load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _path(family, slots: list[str]):
    """A layer-space recipe over expert0 and expert1 (3 layers each) with the named slots on the path."""
    space = LayerSpace.model_validate({
        "models": [str(family["expert0"]), str(family["expert1"])],
        "num_layers": 3, "repeats": 2, "scale": {"low": 0.5, "high": 1.5},
    })
    names = [g.name for g in space.genes()]
    x = [0.0] * space.dimension
    for k, slot in enumerate(slots):
        x[names.index(f"{slot}.in")] = 1.0
        x[names.index(f"scale[{slot}]")] = 0.1 + 0.2 * k  # scales 0.6, 0.8, 1.0, ...
    return space.decode(x)


def _generate(model) -> torch.Tensor:
    return model.generate(PROMPT, max_new_tokens=8, do_sample=False, use_cache=True,
                          pad_token_id=0, eos_token_id=None)


def _check_same(model, recipe, tmp_path, name):
    disk = _load(merge_to_disk(recipe, tmp_path / name).out)
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, disk(PROMPT).logits, rtol=0, atol=1e-6)
    assert torch.equal(_generate(model), _generate(disk))
    assert model.config.num_hidden_layers == disk.config.num_hidden_layers


def test_growing_and_shrinking_a_resident_model_matches_merge_to_disk(untied_family, tmp_path):
    merger = InMemoryMerger({str(p): p for p in untied_family.values()})
    model = _load(untied_family["base"])
    deep = _path(untied_family, ["r0.l0.expert0", "r0.l1.expert1", "r0.l2.expert0", "r1.l1.expert0", "r1.l2.expert1"])
    assert sum(s.num_layers for s in deep.slices) == 5
    assert {s.scale for s in deep.slices} == {0.6, 0.8, 1.0, 1.2, 1.4}
    with pytest.raises(Exception, match="no such tensor"):  # without fitting, the depth does not match
        merger.merge(deep, into=model)

    fit_layers(model, merger.plan(deep).num_layers)
    merger.merge(deep, into=model)
    layers = decoder_layers(model)
    assert len(layers) == 5 and [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3, 4]
    assert len({id(layer) for layer in layers}) == 5  # new modules, not the same one twice
    _check_same(model, deep, tmp_path, "deep")

    shallow = _path(untied_family, ["r0.l2.expert1", "r1.l0.expert0"])
    fit_layers(model, merger.plan(shallow).num_layers)
    merger.merge(shallow, into=model)
    assert len(decoder_layers(model)) == 2
    assert not any(".layers.2." in k for k in model.state_dict())
    _check_same(model, shallow, tmp_path, "shallow")


def test_layer_types_and_sliding_windows_follow_the_new_depth():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    kinds = ["sliding_attention", "full_attention", "full_attention", "sliding_attention", "full_attention"]
    fit_layers(model, 5, layer_types=kinds)
    assert model.config.num_hidden_layers == 5 and model.config.layer_types == kinds
    for i, layer in enumerate(decoder_layers(model)):
        assert layer.self_attn.layer_idx == i
        assert layer.self_attn.sliding_window == (4 if kinds[i] == "sliding_attention" else None)
    # Incremental decoding with the cache agrees with full forward passes.
    out = model.generate(PROMPT, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0,
                         eos_token_id=None, return_dict_in_generate=True)
    assert len(out.past_key_values) == 5
    uncached = model.generate(PROMPT, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0,
                              eos_token_id=None)
    assert torch.equal(out.sequences, uncached)
    fit_layers(model, 2)
    assert model.config.layer_types == kinds[:2] and len(decoder_layers(model)) == 2
    with pytest.raises(ValueError, match="entries"):
        fit_layers(model, 3, layer_types=["full_attention"])
