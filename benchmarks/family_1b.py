"""A 1B-class bf16 model family (issue 30, item 2): Llama-3.2-1B's shapes, sharded, made here.

Nothing can be downloaded on the machines this project is built on, so the family is generated
once and cached (under ``benchmarks/_work/family_1b/``): a base and ``--experts`` fine-tunes with

* Llama-3.2-1B's shapes: 16 layers, hidden 2048, intermediate 8192, 32 heads, 8 KV heads (head
  dim 64), vocabulary 128256, tied embeddings, its rope settings (llama3 scaling, theta 500000);
* bfloat16 tensors in sharded safetensors (``--shard-mb`` each) with a
  ``model.safetensors.index.json``, as the Hub serves larger checkpoints;
* a synthetic tokenizer of that vocabulary built with ``tokenizers`` (a word-level model: "w<i>"
  is token i, the begin / end-of-text tokens at Llama 3's ids 128000 / 128001), loadable with
  ``AutoTokenizer``;
* fine-tunes whose task vectors look like real ones: scales differing by tensor kind, heavy
  (normal times chi-square) tails on some kinds, 20% of embedding rows untouched, and each expert's
  update applied to the bf16 base and rounded back to bf16, so that updates below half a bf16 step
  leave the weight unchanged: most delta elements are exact zeros (printed per expert; 50-70% is
  what bf16 fine-tunes show, issue 30).

Every tensor is drawn from its own seeded generator (the seed and the tensor's name), one tensor at
a time, so the family is the same on every machine and generating it holds one tensor in memory.
A model directory is complete when its ``.complete`` marker exists (written last); an interrupted
generation is redone. The disk's free space is checked first.

    python benchmarks/family_1b.py [--experts 3] [--seed 0] [--shape 1b|tiny] [--root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).parent / "_work" / "family_1b"
SHAPES = {
    "1b": {"hidden": 2048, "intermediate": 8192, "layers": 16, "heads": 32, "kv_heads": 8, "vocab": 128256},
    "tiny": {"hidden": 64, "intermediate": 256, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 128256},
}
BOS, EOS = 128000, 128001
# tensor kind -> (the base weight's std, the task vector's std relative to it, heavy-tailed)
KINDS = {
    "embed_tokens": (0.02, 1.0, True),
    "q_proj": (0.02, 1.0, False),
    "k_proj": (0.02, 1.0, False),
    "v_proj": (0.02, 1.5, False),
    "o_proj": (0.02, 1.5, True),
    "gate_proj": (0.02, 2.0, False),
    "up_proj": (0.02, 2.0, False),
    "down_proj": (0.02, 3.0, True),
    "norm": (0.1, 0.5, False),  # norms: 1 + this
}
# Each expert's task-vector scale, relative to the base weight's std (bf16's step near a weight of
# that size is about std / 128): chosen so that 50-70% of the updates round away.
EXPERT_SCALES = (0.0009, 0.0012, 0.0016)


def config(shape: dict) -> dict:
    h, heads = shape["hidden"], shape["heads"]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": shape["intermediate"], "num_hidden_layers": shape["layers"],
        "num_attention_heads": heads, "num_key_value_heads": shape["kv_heads"], "head_dim": h // heads,
        "vocab_size": shape["vocab"], "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": BOS, "eos_token_id": EOS, "attention_bias": False, "mlp_bias": False,
    }


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model, in the order it is written (tied: no lm_head)."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (h, h),
                       p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                       p + "self_attn.o_proj.weight": (h, h), p + "post_attention_layernorm.weight": (h,),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter)})
    shapes["model.norm.weight"] = (h,)
    return shapes


def _generator(seed: int, *parts: str) -> torch.Generator:
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _kind(name: str) -> tuple[float, float, bool]:
    return next(v for k, v in KINDS.items() if k in name)


def base_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    std, _, _ = _kind(name)
    x = torch.randn(shape, generator=_generator(seed, "base", name)).mul_(std)
    return (x.add_(1.0) if "norm" in name else x).to(torch.bfloat16)


def expert_tensor(base: torch.Tensor, name: str, expert: int, seed: int) -> torch.Tensor:
    std, rel, heavy = _kind(name)
    gen = _generator(seed, f"expert{expert}", name)
    d = torch.randn(base.shape, generator=gen)
    if heavy:  # a scale mixture (normal times chi-square): most entries small, a few far larger.
        # Only exactly rounded operations: a vectorised exp and the scalar one on a chunk's tail can
        # differ in the last bit, and which entries fall in a tail depends on the threads' chunking.
        d.mul_(torch.randn(base.shape, generator=gen).square_().add_(0.25))
    if "embed_tokens" in name:  # tokens the fine-tune never saw keep their rows
        d.mul_((torch.rand(base.shape[0], 1, generator=gen) > 0.2).float())
    d.mul_(std * rel * EXPERT_SCALES[expert % len(EXPERT_SCALES)])
    return base.float().add_(d).to(torch.bfloat16)  # the update rounded back to bf16, as a bf16 fine-tune is


def shard_plan(shapes: dict[str, tuple[int, ...]], shard_bytes: int) -> list[list[str]]:
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_model(out: Path, cfg: dict, tensor, shard_bytes: int) -> dict:
    """Write one model's shards, index and config; ``tensor(name, shape)`` makes each tensor.
    Returns the bytes written (the index's total_size)."""
    shapes = tensor_shapes(cfg)
    plan = shard_plan(shapes, shard_bytes)
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for i, names in enumerate(plan):
        file = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
        tensors = {name: tensor(name, shapes[name]) for name in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = file
            total += t.numel() * t.element_size()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return {"bytes": total}


def write_tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(vocab)}
    words.pop(f"w{BOS}"), words.pop(f"w{EOS}")
    words.update({"<|begin_of_text|>": BOS, "<|end_of_text|>": EOS})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>", "unk_token": "w0",
        "model_max_length": 131072}))


def make_family(root: Path = ROOT, *, experts: int = 3, seed: int = 0, shape: str = "1b",
                shard_mb: int = 1024, log=print) -> dict[str, Path]:
    """The family's model directories by name (``base``, ``expert0``...), generated where missing."""
    cfg = config(SHAPES[shape])
    names = ["base", *(f"expert{e}" for e in range(experts))]
    paths = {n: root / f"{shape}-seed{seed}" / n for n in names}
    missing = [n for n in names if not (paths[n] / ".complete").exists()]
    if not missing:
        return paths
    need = len(missing) * 2 * sum(math.prod(s) for s in tensor_shapes(cfg).values())
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need * 1.1:
        raise SystemExit(f"family_1b: generating {', '.join(missing)} needs about {need / 1e9:.1f} GB under "
                         f"{root}, and {free / 1e9:.1f} GB are free; free some space or pass --root on a "
                         f"larger disk (nothing was written).")
    for n in missing:
        shutil.rmtree(paths[n], ignore_errors=True)  # a partial generation is redone
    shard_bytes = shard_mb << 20
    for n in missing:
        zeros = [0, 0]

        def tensor(name, tshape, n=n, zeros=zeros):
            b = base_tensor(name, tshape, seed)
            if n == "base":
                return b
            x = expert_tensor(b, name, int(n.removeprefix("expert")), seed)
            zeros[0] += int(torch.eq(x, b).sum())
            zeros[1] += x.numel()
            return x

        info = write_model(paths[n], cfg, tensor, shard_bytes)
        write_tokenizer(paths[n], cfg["vocab_size"])
        note = f", {zeros[0] / zeros[1]:.1%} of the delta's elements exactly zero" if zeros[1] else ""
        log(f"family_1b: {n}: {info['bytes'] / 1e9:.2f} GB{note}")
        (paths[n] / ".complete").write_text(json.dumps({"zero_fraction": zeros[0] / zeros[1] if zeros[1] else None}))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--shard-mb", type=int, default=1024)
    args = ap.parse_args()
    paths = make_family(args.root, experts=args.experts, seed=args.seed, shape=args.shape, shard_mb=args.shard_mb)
    for n, p in paths.items():
        print(f"{n}: {p}")


if __name__ == "__main__":
    sys.exit(main())
