"""Tiny, random models for tests, demos and benchmarks (no download, made in seconds).

A family is a base Llama and "experts" that are the base plus small random
task vectors: real merges have something to do, and every architectural case
that matters (grouped-query attention, tied or untied embeddings) is covered.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def llama_config(
    *,
    tied: bool,
    hidden: int = 32,
    layers: int = 3,
    intermediate: int = 48,
    vocab: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def llama_state(config: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    sd = {"model.embed_tokens.weight": torch.randn(v, h, generator=gen) * 0.02}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
        sd[p + "self_attn.q_proj.weight"] = torch.randn(h, h, generator=gen) * 0.05
        sd[p + "self_attn.k_proj.weight"] = torch.randn(kv, h, generator=gen) * 0.05
        sd[p + "self_attn.v_proj.weight"] = torch.randn(kv, h, generator=gen) * 0.05
        sd[p + "self_attn.o_proj.weight"] = torch.randn(h, h, generator=gen) * 0.05
        sd[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
        sd[p + "mlp.gate_proj.weight"] = torch.randn(inter, h, generator=gen) * 0.05
        sd[p + "mlp.up_proj.weight"] = torch.randn(inter, h, generator=gen) * 0.05
        sd[p + "mlp.down_proj.weight"] = torch.randn(h, inter, generator=gen) * 0.05
    sd["model.norm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
    if not config["tie_word_embeddings"]:
        sd["lm_head.weight"] = torch.randn(v, h, generator=gen) * 0.02
    return sd


def save_model(path: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return path


def make_family(
    root: Path, *, tied: bool, n_experts: int = 3, seed: int = 0, delta: float = 0.02,
    dtype: torch.dtype = torch.float32, zeros: float = 0.0, **shape
) -> dict[str, Path]:
    """Write ``base`` and ``expert0..`` under ``root`` in ``dtype``; returns their paths by name.
    ``zeros``: the fraction of each expert's delta left exactly zero (as a bf16 fine-tune's)."""
    gen = torch.Generator().manual_seed(seed)
    config = llama_config(tied=tied, **shape)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    base = llama_state(config, gen)
    models = {"base": save_model(root / "base", {k: v.to(dtype) for k, v in base.items()}, config)}
    for e in range(n_experts):
        expert = {}
        for k, v in base.items():
            d = delta * torch.randn(v.shape, generator=gen)
            if zeros:
                d.masked_fill_(torch.rand(v.shape, generator=gen) < zeros, 0.0)
            expert[k] = (v + d).to(dtype)
        models[f"expert{e}"] = save_model(root / f"expert{e}", expert, config)
    return models


def save_word_tokenizer(
    path: Path, words: list[str], added: tuple[str, ...] = (), chat_template: str | None = None
) -> Path:
    """A word-level fast tokenizer in ``path``: ``words`` get ids 0.. in order (the first three
    are unk, bos and eos), ``added`` tokens follow as added tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=words[0], bos_token=words[1], eos_token=words[2]
    )
    fast.add_tokens(list(added))
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(path))
    return path


VOCAB_FAMILY = {
    # name: (ordinary tokens, added tokens); "w0".."w60" are shared, at different ids in "b".
    "base": (["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)], ()),
    "a": (["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)] + ["alpha", "beta"], ("<tool>",)),
    "b": (["<unk>", "<s>", "</s>", "beta", "gamma"] + [f"w{i}" for i in range(60, -1, -1)],
          ("<tool>", "<x>")),
}


def make_vocab_family(root: Path, *, tied: bool, seed: int = 0, delta: float = 0.02) -> dict[str, Path]:
    """``base``, ``a`` and ``b``: tiny Llamas whose tokenizers differ (``VOCAB_FAMILY``: extra
    ordinary and added tokens, shared tokens at other ids). A token's embedding (and head)
    row is the same random row, plus each model's own noise, wherever it sits."""
    gen = torch.Generator().manual_seed(seed)
    all_tokens = list(dict.fromkeys(t for words, added in VOCAB_FAMILY.values() for t in (*words, *added)))
    config = llama_config(tied=tied)
    shared = llama_state({**config, "vocab_size": len(all_tokens)}, gen)
    out = {}
    for name, (words, added) in VOCAB_FAMILY.items():
        tokens = [*words, *added]
        cfg = {**config, "vocab_size": len(tokens)}
        rows = torch.tensor([all_tokens.index(t) for t in tokens])
        state = {}
        for key, value in shared.items():
            value = value[rows] if value.shape[0] == len(all_tokens) and ("embed" in key or "lm_head" in key) else value
            state[key] = value + delta * torch.randn(value.shape, generator=gen) if name != "base" else value
        save_model(root / name, state, cfg)
        (root / name / "tokenizer_config.json").unlink()
        save_word_tokenizer(root / name, words, added)
        out[name] = root / name
    return out


def tiny_char_lm(seed: int = 0, *, layers: int = 2, hidden: int = 32, tied: bool = False):
    """A random, untrained Llama over the zoo's character tokenizer: (model, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.zoo.skills import ALPHABET
    from evomerge.zoo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(ALPHABET)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Large random weights make greedy outputs vary with the prompt (a small init
    # answers every prompt alike, which would make the evaluator tests toothless).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name or "lm_head" in name else hidden**-0.5)
    return model, tokenizer


def run_mergekit_to_disk(config: dict, out: Path, *, lora_cache: Path | None = None) -> Path:
    """Run mergekit's ``run_merge`` (the reference, a test-only dependency) in-process into
    ``out``. ``lora_cache``: where mergekit writes the dense models of ``base+adapter`` references."""
    import logging

    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    logging.getLogger("mergekit").setLevel(logging.ERROR)
    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False, device="cpu",
                     lora_merge_cache=str(lora_cache) if lora_cache else None),
    )
    return Path(out)


def run_mergekit(config: dict, out: Path, *, lora_cache: Path | None = None) -> dict[str, torch.Tensor]:
    """``run_mergekit_to_disk``, then mergekit's tensors."""
    from safetensors.torch import load_file

    run_mergekit_to_disk(config, out, lora_cache=lora_cache)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(out).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def mini_zoo_config():
    """A zoo that trains in about a second (2 layers, hidden 32, a few steps): for search tests."""
    from evomerge.zoo.build import Architecture, ExpertSpec, Stage, ZooConfig

    return ZooConfig(
        architecture=Architecture(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
        base=Stage(steps=3, lr=1e-3, batch_size=8),
        experts=(
            ExpertSpec(name="add", skill="addition", steps=2, lr=1e-3, batch_size=8, seed=1),
            ExpertSpec(name="rev", skill="reversal", steps=2, lr=1e-3, batch_size=8, seed=2),
        ),
        workers=1,
    )
