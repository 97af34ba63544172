"""A miniature zoo (tiny widths, a few steps) exercises the whole build path in seconds."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.zoo.build import Architecture, ExpertSpec, Stage, ZooConfig, build_zoo, is_built

MINI = ZooConfig(
    architecture=Architecture(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
    base=Stage(steps=4, lr=1e-3, batch_size=8),
    experts=(
        ExpertSpec(name="add", skill="addition", steps=3, lr=1e-3, batch_size=8, seed=1, replay=0.5),
        ExpertSpec(name="rev", skill="reversal", steps=3, lr=1e-3, batch_size=8, seed=2),
    ),
    workers=1,
)


@pytest.fixture(scope="module")
def mini_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    build_zoo(out, MINI, log=lambda s: None)
    return out


def test_mini_zoo_models_are_plain_hf_directories(mini_zoo):
    manifest = json.loads((mini_zoo / "zoo.json").read_text())
    assert set(manifest["models"]) == {"base", "add", "rev"}
    base = AutoModelForCausalLM.from_pretrained(mini_zoo / "base")
    tok = AutoTokenizer.from_pretrained(mini_zoo / "add")
    add = AutoModelForCausalLM.from_pretrained(mini_zoo / "add")
    assert base.config.num_hidden_layers == 2 and len(tok) == base.config.vocab_size
    # Experts moved away from the base; tensor names and shapes are identical (mergeable).
    sb, sa = base.state_dict(), add.state_dict()
    assert sb.keys() == sa.keys()
    assert any(not torch.equal(sb[k], sa[k]) for k in sb)


def test_experts_train_in_child_processes_and_failures_name_the_expert(mini_zoo, tmp_path):
    from evomerge.zoo.build import ZooError, _run_experts

    said: list[str] = []
    _run_experts(mini_zoo / "base", tmp_path, MINI.experts[:1], MINI.base_mixture, 2, 1, said.append)
    assert (tmp_path / "add" / "model.safetensors").is_file() and "expert add done" in said[0]
    with pytest.raises(ZooError, match="add \\(exit"):
        _run_experts(tmp_path / "missing", tmp_path, MINI.experts[:1], MINI.base_mixture, 2, 1, said.append)


def test_second_build_is_a_cache_hit(mini_zoo):
    mtime = (mini_zoo / "add" / "model.safetensors").stat().st_mtime_ns
    said = []
    build_zoo(mini_zoo, MINI, log=said.append)
    assert "up to date" in said[0]
    assert (mini_zoo / "add" / "model.safetensors").stat().st_mtime_ns == mtime
    changed = MINI.model_copy(update={"seed": 1})
    assert not is_built(mini_zoo, changed)


def test_unknown_skill_fails_before_training(tmp_path):
    bad = MINI.model_copy(update={"experts": (ExpertSpec(name="x", skill="juggling", steps=1, lr=1e-3),)})
    with pytest.raises(Exception, match="Unknown skill 'juggling'"):
        build_zoo(tmp_path / "z", bad, log=lambda s: None)
    assert not (tmp_path / "z").exists()


def test_report_scores_models_and_merges(mini_zoo):
    from evomerge.zoo.report import zoo_report

    rep = zoo_report(mini_zoo, trials=3, fidelity=4)
    names = [r.name for r in rep.rows]
    assert names == [
        "base", "add", "rev", "average", "task_arithmetic", "ties", "merge_searched", "layer_path_searched"
    ]
    assert rep.skills == ["addition", "reversal"]
    for r in rep.rows:
        assert set(r.scores) == {"addition", "reversal"}
        assert all(0.0 <= v <= 1.0 for v in r.scores.values())
    tuned = rep.row("merge_searched").recipe
    assert tuned.merge_method in {"task_arithmetic", "ties", "dare_ties"}
    assert all(0.0 <= m.parameters["weight"] <= 1.2 for m in tuned.models)
    path = rep.row("layer_path_searched").recipe
    assert len(path.slices) == 2 and all(s.sources[0].model in {"base", "add", "rev"} for s in path.slices)


def test_zoo_models_merge_in_mergekit_as_in_evomerge(tmp_path):
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.recipe import Recipe
    from evomerge.testing import run_mergekit

    # Experts that take SGD steps: a few Adam steps move many weights by exactly +-lr, and where
    # such ties straddle TIES's magnitude threshold evomerge keeps every tied entry while
    # mergekit's argsort keeps an arbitrary subset of them (merge/sparsify.py).
    sgd = tuple(e.model_copy(update={"optimizer": "sgd", "lr": 0.05}) for e in MINI.experts)
    mini_zoo = build_zoo(tmp_path / "zoo", MINI.model_copy(update={"experts": sgd}), log=lambda s: None)
    config = {
        "merge_method": "ties",
        "base_model": str(mini_zoo / "base"),
        "models": [
            {"model": str(mini_zoo / n), "parameters": {"weight": w, "density": 0.5}}
            for n, w in (("add", 0.7), ("rev", 1.2))
        ],
        "dtype": "float32",
    }
    theirs = run_mergekit(config, tmp_path / "mk")
    ours = InMemoryMerger({str(mini_zoo / n): mini_zoo / n for n in ("base", "add", "rev")}).merge(
        Recipe.from_dict(config, "test")
    )
    assert theirs.keys() == ours.keys()
    for k in theirs:
        assert torch.allclose(theirs[k], ours[k], atol=1e-6), k


def test_the_zoo_seed_moves_the_init_and_every_stage_s_data(tmp_path):
    from evomerge.zoo.build import expert_mixture

    spec = MINI.experts[0]
    assert spec.data_seed(0) == spec.seed and spec.data_seed(2) != spec.data_seed(1)
    draw = [expert_mixture(spec, MINI.base_mixture).sampler(spec.data_seed(s), set()) for s in (0, 1)]
    assert [draw[0]() for _ in range(8)] != [draw[1]() for _ in range(8)]


def test_an_expert_leaves_its_frozen_parameters_as_the_base_has_them(mini_zoo, tmp_path):
    from evomerge.zoo.build import train_expert

    spec = MINI.experts[1].model_copy(update={"frozen": ("model.embed_tokens", "lm_head"), "optimizer": "sgd"})
    train_expert(mini_zoo / "base", tmp_path / "rev", spec, MINI.base_mixture, 1)
    base = AutoModelForCausalLM.from_pretrained(mini_zoo / "base").state_dict()
    rev = AutoModelForCausalLM.from_pretrained(tmp_path / "rev").state_dict()
    for name in base:
        same = torch.equal(base[name], rev[name])
        assert same == name.startswith(spec.frozen), name


def test_a_quick_report_scores_models_and_fixed_merges_only(mini_zoo):
    from evomerge.zoo.report import zoo_report

    report = zoo_report(mini_zoo, fidelity=4, searched=False)
    assert [r.name for r in report.rows] == ["base", "add", "rev", "average", "task_arithmetic", "ties"]


def test_a_blocks_family_copies_a_matching_base_and_trains_only_its_new_block(mini_zoo, tmp_path):
    blocks = MINI.model_copy(update={"new_blocks": 1})
    assert blocks.base_hash() == MINI.base_hash() and blocks.content_hash() != MINI.content_hash()
    said: list[str] = []
    out = build_zoo(tmp_path / "blocks", blocks, base_from=mini_zoo, log=said.append)
    assert any("the same as" in s for s in said) and not any("base step" in s for s in said)
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    original = AutoModelForCausalLM.from_pretrained(mini_zoo / "base")
    assert base.config.num_hidden_layers == 3
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    assert torch.allclose(base(ids).logits, original(ids).logits, atol=1e-6)  # the new block adds nothing yet
    sb = base.state_dict()
    for name in ("add", "rev"):
        se = AutoModelForCausalLM.from_pretrained(out / name).state_dict()
        moved = {k for k in sb if not torch.equal(sb[k], se[k])}
        assert moved and all(k.startswith("model.layers.2.") for k in moved), name


def test_a_base_is_only_copied_from_a_zoo_that_trained_the_same_one(mini_zoo, tmp_path):
    other_seed = MINI.model_copy(update={"seed": 5, "new_blocks": 1})
    said: list[str] = []
    build_zoo(tmp_path / "blocks", other_seed, base_from=mini_zoo, log=said.append)
    assert not any("the same as" in s for s in said) and any("base step" in s for s in said)
