"""benchmarks/family_1b.py at a tiny shape (Llama-3.2-1B's vocabulary, two small layers): sharded
bf16 checkpoints with an index that transformers and evomerge load, a tokenizer of that vocabulary,
fine-tunes whose deltas are mostly exact zeros, the same bytes on a second generation, and a disk
too small refused before anything is written (seconds)."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

BENCHMARK = "family_1b"  # loaded by conftest.bench


@pytest.fixture(scope="module")
def family(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    return bench.make_family(root, experts=2, shape="tiny", shard_mb=8, log=lambda s: None)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for file in sorted(set(index["weight_map"].values())):
        with safe_open(str(path / file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open has no iterator)
    assert set(out) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    return out


def test_sharded_bf16_with_an_index_and_mostly_zero_deltas(family):
    base, expert = _tensors(family["base"]), _tensors(family["expert0"])
    assert len(list(family["base"].glob("model-*-of-*.safetensors"))) >= 2
    assert {t.dtype for t in base.values()} == {torch.bfloat16}
    assert base["model.embed_tokens.weight"].shape == (128256, 64) and "lm_head.weight" not in base
    zero = sum(int(torch.eq(expert[k], base[k]).sum()) for k in base) / sum(t.numel() for t in base.values())
    assert 0.5 <= zero < 0.95, zero
    marker = json.loads((family["expert0"] / ".complete").read_text())
    assert marker["zero_fraction"] == pytest.approx(zero)


def test_transformers_loads_the_model_and_the_tokenizer(family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family["base"])
    assert len(tok) == 128256 and tok.bos_token_id == 128000 and tok("w5 w70000")["input_ids"] == [5, 70000]
    model = AutoModelForCausalLM.from_pretrained(family["expert1"], dtype=torch.bfloat16)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    logits = model(torch.tensor([[128000, 5, 7]])).logits
    assert logits.shape == (1, 3, 128256) and torch.isfinite(logits).all()


def test_evomerge_merges_the_family(family, tmp_path):
    from evomerge.merge.engine import merge_to_disk
    from evomerge.recipe import Recipe

    recipe = Recipe.from_dict({"merge_method": "ties", "base_model": str(family["base"]), "dtype": "bfloat16",
                               "models": [{"model": str(family[e]), "parameters": {"weight": 0.5, "density": 0.5}}
                                          for e in ("expert0", "expert1")]})
    out = merge_to_disk(recipe, tmp_path / "merged").out
    merged = {}
    for f in out.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            merged.update({k: h.get_tensor(k) for k in h.keys()})  # noqa: SIM118
    assert merged["model.norm.weight"].dtype == torch.bfloat16 and len(merged) == len(_tensors(family["base"]))


def test_generation_is_deterministic_and_a_small_disk_is_refused(bench, family, tmp_path, monkeypatch):
    again = bench.make_family(tmp_path / "again", experts=1, shape="tiny", shard_mb=8, log=lambda s: None)
    for name in ("base", "expert0"):
        for file in family[name].glob("*.safetensors"):
            assert file.read_bytes() == (again[name] / file.name).read_bytes(), file.name
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(SystemExit, match=r"needs about .* GB under .*--root"):
        bench.make_family(tmp_path / "full", experts=1, shape="tiny", log=lambda s: None)
    assert not (tmp_path / "full" / "tiny-seed0").exists()
