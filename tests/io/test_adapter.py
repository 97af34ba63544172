"""LoRA adapters as tensor sources: every tensor equals peft's merge_and_unload (torch.equal, float32),
and what is not implemented is refused by name."""

from __future__ import annotations

import json
import warnings

import peft  # a test-only dependency (with mergekit, in the test extra)
import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import CheckpointError
from evomerge.io import Checkpoint
from evomerge.io.adapter import AdaptedSource, read_adapter
from evomerge.testing.models import tiny_char_lm


def _llama(tied=False, **shape):
    return tiny_char_lm(seed=0, tied=tied, **shape)[0]


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


MAKERS = {"llama": _llama, "tied": lambda: _llama(tied=True), "gpt2": _gpt2}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Each base saved once (float32): name -> directory."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for name, make in MAKERS.items():
        make().save_pretrained(root / name)
        out[name] = root / name
    return out


def _adapter(path, model, perturb_base_layer=False, **lora):
    """A real peft adapter on ``model``, with every trainable tensor set to random nonzero
    values (peft starts lora_B at zero), saved to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, peft.LoraConfig(**lora))
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if p.requires_grad or (perturb_base_layer and "base_layer" in name):
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
        pm.save_pretrained(str(path))
    return path


def _peft_merged(base_dir, adapter_dir, model_cls, dtype=torch.float32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = model_cls.from_pretrained(str(base_dir), dtype=dtype)
        return peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().state_dict()


def _assert_parity(base_dir, adapter_dir, model_cls, dtype=torch.float32):
    src = AdaptedSource(Checkpoint(base_dir), read_adapter(adapter_dir))
    expected = _peft_merged(base_dir, adapter_dir, model_cls, dtype)
    base = Checkpoint(base_dir)
    changed = 0
    for name in src.tensor_names():
        got = src.get(name)
        assert got.dtype == src.dtype(name) == base.dtype(name) and tuple(got.shape) == src.shape(name)
        assert torch.equal(got, expected[name]), name
        changed += not torch.equal(got, base.get(name))
    assert changed > 0
    return src


LLAMA_CASES = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["k_proj", "o_proj"]),
    "alpha_over_r": dict(r=3, lora_alpha=5, target_modules=["gate_proj", "down_proj"]),
    "regex": dict(r=4, lora_alpha=8, target_modules=r".*\.layers\.1\.mlp\.(up|down)_proj"),
    "all_linear": dict(r=2, lora_alpha=4, target_modules="all-linear"),
    "modules_to_save": dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "patterns": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     rank_pattern={"q_proj": 2, "model.layers.1.mlp.down_proj": 6}, alpha_pattern={"v_proj": 3}),
    "layers_to_transform": dict(r=4, lora_alpha=8, target_modules=["q_proj"], layers_to_transform=[1]),
    "mica": dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"], init_lora_weights="mica"),
    "embeddings_and_head": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head", "o_proj"]),
}


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_matches_peft_merge_and_unload(case, bases, tmp_path):
    from transformers import LlamaForCausalLM

    # The embedding case also changes the saved base_layer copies: peft loads those in place of the base's.
    adapter = _adapter(tmp_path / "a", _llama(), perturb_base_layer=True, **LLAMA_CASES[case])
    src = _assert_parity(bases["llama"], adapter, LlamaForCausalLM)
    if case == "modules_to_save":
        assert src.replaced("lm_head.weight") and src.factors("lm_head.weight") is None
    if case == "embeddings_and_head":
        assert src.replaced("model.embed_tokens.weight") and src.adapter.targets["model.embed_tokens.weight"].embedding


TIED_CASES = {
    "embedding_lora": dict(target_modules=["embed_tokens", "q_proj"]),
    "embedding_copy_kept_tied": dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True),
}


@pytest.mark.parametrize("case", list(TIED_CASES))
def test_tied_base(case, bases, tmp_path):
    """The head stays tied to the (adapted) embedding: the source has no head of its own."""
    from transformers import LlamaForCausalLM

    adapter = _adapter(tmp_path / "a", _llama(tied=True), r=4, lora_alpha=8, **TIED_CASES[case])
    src = _assert_parity(bases["tied"], adapter, LlamaForCausalLM)
    assert "lm_head.weight" not in src


def test_fan_in_fan_out_conv1d(bases, tmp_path):
    """GPT-2's Conv1D weights are stored (in, out): c_attn is not square, attn.c_proj is."""
    from transformers import GPT2LMHeadModel

    adapter = _adapter(tmp_path / "a", _gpt2(), r=4, lora_alpha=8, fan_in_fan_out=True,
                       target_modules=["c_attn", "c_proj", "c_fc"])
    assert json.loads((adapter / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    _assert_parity(bases["gpt2"], adapter, GPT2LMHeadModel)


def test_bfloat16_base(tmp_path):
    """A bfloat16 base: peft upcasts the factors, adds in float32 and rounds once."""
    from transformers import LlamaForCausalLM

    _llama().to(torch.bfloat16).save_pretrained(tmp_path / "base")
    adapter = _adapter(tmp_path / "a", _llama(), r=4, lora_alpha=8,
                       target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"])
    _assert_parity(tmp_path / "base", adapter, LlamaForCausalLM, torch.bfloat16)


def test_factors_give_the_delta(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(), r=4, lora_alpha=6, target_modules=["q_proj", "embed_tokens"])
    base = Checkpoint(bases["llama"])
    src = AdaptedSource(base, read_adapter(adapter))
    q = "model.layers.0.self_attn.q_proj.weight"
    b, a, scale = src.factors(q)
    assert scale == 1.5 and b.shape == (32, 4) and a.shape == (4, 32)
    assert torch.equal(src.get(q), base.get(q) + (b @ a) * scale)
    b, a, _ = src.factors("model.embed_tokens.weight")  # transposed: lora_embedding_A.T, lora_embedding_B.T
    assert (b @ a).shape == base.shape("model.embed_tokens.weight")
    torch.testing.assert_close(b @ a * scale, src.delta("model.embed_tokens.weight"))
    assert src.factors("model.norm.weight") is None and src.delta("model.norm.weight") is None
    assert torch.equal(src.get("model.norm.weight"), base.get("model.norm.weight"))
    assert src.tensor_names() == base.tensor_names()


# -- refusals ------------------------------------------------------------------


def _refused(base_dir, adapter_dir, *needles):
    with pytest.raises(CheckpointError) as info:
        AdaptedSource(Checkpoint(base_dir), read_adapter(adapter_dir))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


@pytest.fixture
def plain(tmp_path):
    return _adapter(tmp_path / "plain", _llama(), r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _edit_config(adapter, **fields):
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "lora_only"}, "bias"),
        ({"bias": "all"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
        ({"peft_type": "IA3"}, "IA3"),
        ({"init_lora_weights": "pissa"}, "pissa"),
        ({"trainable_token_indices": [3, 4]}, "trainable_token_indices"),
        ({"r": 8}, "rank 8"),
        ({"target_modules": ["q_proj"]}, "v_proj"),
    ],
)
def test_config_refusals_name_the_field(fields, needle, bases, plain):
    _edit_config(plain, **fields)
    _refused(bases["llama"], plain, needle, "adapter_config.json" if "target_modules" not in fields else "target_modules")


def test_real_dora_adapter_is_refused(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(), r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    _refused(bases["llama"], adapter, "use_dora", "DoRA")


def test_unknown_keys_are_named(bases, plain):
    file = plain / "adapter_model.safetensors"
    tensors = load_file(str(file))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(file))
    _refused(bases["llama"], plain, "unknown keys", "q_proj.lora_C.weight", str(file))


def test_adapter_for_another_base_is_refused(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(hidden=48), r=4, lora_alpha=8, target_modules=["q_proj"])
    _refused(bases["llama"], adapter, "model.layers.0.self_attn.q_proj.weight", "(32, 32)", "(48, 48)",
             "another base")


def test_adapter_with_more_layers_than_the_base_is_refused(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(layers=3), r=4, lora_alpha=8, target_modules=["q_proj"])
    _refused(bases["llama"], adapter, "missing from the base", "model.layers.2.self_attn.q_proj.weight")


def test_head_adapter_on_tied_base_is_refused(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(), r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    _refused(bases["tied"], adapter, "lm_head.weight", "tie_word_embeddings")


def test_untying_embedding_copy_is_refused(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(tied=True), r=4, lora_alpha=8, target_modules=["q_proj"],
                       modules_to_save=["embed_tokens"])
    _refused(bases["tied"], adapter, "model.embed_tokens.weight", "ensure_weight_tying")


def test_bias_all_from_peft_is_refused(bases, tmp_path):
    adapter = _adapter(tmp_path / "a", _llama(), r=4, lora_alpha=8, target_modules=["q_proj"], bias="all")
    _refused(bases["llama"], adapter, "bias", "'all'")


def test_pickle_adapter_is_refused_unread(bases, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(_llama(), peft.LoraConfig(r=4, target_modules=["q_proj"]))
        pm.save_pretrained(str(tmp_path / "a"), safe_serialization=False)
    assert (tmp_path / "a" / "adapter_model.bin").exists()
    _refused(bases["llama"], tmp_path / "a", "adapter_model.bin", "safetensors")


def test_missing_config_is_named(bases, plain):
    (plain / "adapter_config.json").unlink()
    _refused(bases["llama"], plain, "adapter_config.json", str(plain))


def test_model_directory_is_not_an_adapter(bases):
    _refused(bases["llama"], bases["llama"], "no adapter_config.json")
