"""Bad model references (issue 27's catalogue: Hub ids and adapters as sources).

Entries, one test each, through the real command line against a local Hub cache, offline
unless noted (exit 2, one paragraph naming the repo, revision, file or tensor and the fix, no
traceback, nothing written):

S1. an unknown Hub id (not cached, downloads off);
S2. an unknown revision of a cached repo;
S3. a gated repo without a token (online, the Hub's GatedRepoError simulated);
S4. a cached snapshot missing a shard its index lists;
S5. an adapter made for another base (its LoRA shapes do not fit);
S6. a DoRA adapter;
S7. ``base+`` with nothing after it;
S8. a search whose space names an unknown Hub id: refused before the run directory is made;
S9. an adapter named as a model (without its base).
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import assert_refused, invoke
from safetensors.torch import load_file, save_file

from evomerge.testing.hub_cache import put_in_cache

TOKEN = "hf_PLANTEDtokenNEVERtoBEseen0123456789"


def _recipe(tmp_path, base, *models) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "merge_method": "ties", "base_model": base, "dtype": "float32",
        "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in models]}))
    return str(path)


def merge(tmp_path, base, *models):
    return invoke("merge", _recipe(tmp_path, base, *models), "--out", tmp_path / "out")


@pytest.fixture
def cached(hub_cache, untied_family):
    for name in ("base", "expert0", "expert1"):
        put_in_cache(hub_cache, f"org/{name}", untied_family[name])
    return hub_cache


def test_s1_unknown_hub_id(tmp_path, cached):
    message = assert_refused(merge(tmp_path, "org/base", "org/expert0", "org/nonexistent"),
                             "org/nonexistent", str(cached), "HF_HUB_OFFLINE", "hf download org/nonexistent")
    assert not (tmp_path / "out").exists(), message


def test_s2_unknown_revision(tmp_path, cached):
    assert_refused(merge(tmp_path, "org/base", "org/expert0@v9"), "org/expert0@v9", "revision 'v9'",
                   "holds org/expert0 at main", "hf download org/expert0 --revision v9")
    assert not (tmp_path / "out").exists()


def test_s3_gated_repo_without_a_token(tmp_path, cached, monkeypatch):
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # a token of an account that did not accept the terms
    real = __import__("huggingface_hub").snapshot_download

    def hub(repo_id, **kw):
        if repo_id != "org/gated":
            return real(repo_id, **kw)
        if kw.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise GatedRepoError("401 Client Error: cannot access gated repo",
                             response=httpx2.Response(401, request=request))

    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    result = merge(tmp_path, "org/base", "org/gated")
    assert_refused(result, "org/gated", "gated", "accept", "HF_TOKEN", "hf auth login")
    assert TOKEN not in result.output
    assert not (tmp_path / "out").exists()


def test_s4_snapshot_missing_a_shard(tmp_path, hub_cache, untied_family):
    put_in_cache(hub_cache, "org/base", untied_family["base"])
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    state = load_file(str(untied_family["expert0"] / "model.safetensors"))
    names = sorted(state)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in parts.items():
        save_file({n: state[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: f for f, part in parts.items() for n in part}}))
    shutil.copy(untied_family["expert0"] / "config.json", sharded / "config.json")
    put_in_cache(hub_cache, "org/sharded", sharded, skip=("model-00002-of-00002.safetensors",))
    assert_refused(merge(tmp_path, "org/base", "org/sharded"), "org/sharded",
                   "model-00002-of-00002.safetensors", "partial download", "hf download org/sharded")
    assert not (tmp_path / "out").exists()


def test_s5_adapter_made_for_another_base(tmp_path, cached, untied_family):
    from evomerge.testing import make_family
    from evomerge.testing.adapters import make_lora_adapter

    other = make_family(tmp_path / "other", tied=False, n_experts=0, seed=9, hidden=48, heads=4, kv_heads=2)
    lora = make_lora_adapter(other["base"], tmp_path / "other-lora", target_modules=["q_proj"])
    assert_refused(merge(tmp_path, "org/base", f"org/base+{lora}"), str(lora), "does not fit base model",
                   "model.layers.0.self_attn.q_proj.weight", "made for another base")
    assert not (tmp_path / "out").exists()


def test_s6_dora_adapter(tmp_path, cached, untied_family):
    from evomerge.testing.adapters import make_lora_adapter

    dora = make_lora_adapter(untied_family["base"], tmp_path / "dora", use_dora=True, target_modules=["q_proj"])
    put_in_cache(cached, "org/dora", dora)
    assert_refused(merge(tmp_path, "org/base", "org/base+org/dora"), "adapter_config.json", "use_dora", "DoRA")
    assert not (tmp_path / "out").exists()


def test_s7_plus_with_nothing_after_it(tmp_path, cached):
    assert_refused(merge(tmp_path, "org/base", "org/expert0+"), "org/expert0+", "nothing follows the '+'",
                   "PEFT LoRA adapter")
    assert not (tmp_path / "out").exists()


def test_s8_a_search_over_an_unknown_hub_id_writes_nothing(tmp_path, cached):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "base_model": "org/base", "models": ["org/expert0", "org/missing"], "methods": ["ties"],
        "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}}}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "space": "space.yaml", "objectives": [{"task": "zoo_text"}], "fidelity": 4,
        "optimizer": {"name": "random"}, "budget": {"trials": 2}, "tracking": {"enabled": False}}))
    result = invoke("search", tmp_path / "run.yaml", "--out", tmp_path / "run")
    assert_refused(result, "space.yaml", "org/missing", "hf download org/missing")
    assert not (tmp_path / "run").exists()


def test_s9_an_adapter_named_as_a_model(tmp_path, cached, untied_family):
    from evomerge.testing.adapters import make_lora_adapter

    put_in_cache(cached, "org/lora", make_lora_adapter(untied_family["base"], tmp_path / "lora"))
    assert_refused(merge(tmp_path, "org/base", "org/lora"), "org/lora", "is a PEFT LoRA adapter",
                   "BASE+org/lora", f"base_model_name_or_path '{untied_family['base']}'")
    assert not (tmp_path / "out").exists()
