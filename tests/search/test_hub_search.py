"""A search whose sources are Hub ids, one of them ``base+adapter``, from a local Hub cache,
offline: it runs on a worker pool (and, ``-m ray``, on Ray), survives kill -9 and ``resume``,
refuses to resume after a branch moved, exports a recipe pinned to the commits it searched whose
tensors equal mergekit's merge of that recipe, and never writes the Hub token anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from run_helpers import evaluations, search_killed_at_gate, write_gate
from safetensors.torch import load_file

from evomerge.testing import mini_zoo_config, run_mergekit
from evomerge.testing.adapters import make_lora_adapter
from evomerge.testing.hub_cache import put_in_cache, snapshot_dir
from evomerge.zoo.build import build_zoo

TOKEN = "hf_PLANTEDtokenNEVERtoBEseen0123456789"
TRIALS = 8
SOURCES = ("org/base", "org/add", "org/base+org/rev-lora")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The mini zoo's base and ``add`` expert, and a LoRA adapter of the base, published in a
    local Hub cache."""
    root = tmp_path_factory.mktemp("hub-world")
    zoo = build_zoo(root / "zoo", mini_zoo_config(), log=lambda s: None)
    lora = make_lora_adapter(zoo / "base", root / "rev-lora", seed=5, scale=0.05)
    cache = root / "hf-cache"
    commits = {repo: put_in_cache(cache, repo, path)
               for repo, path in (("org/base", zoo / "base"), ("org/add", zoo / "add"), ("org/rev-lora", lora))}
    return {"cache": cache, "commits": commits, "zoo": zoo}


def _env(world) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(world["cache"]), HF_TOKEN=TOKEN)
    env.pop("HF_HOME", None)
    return env


def _write(tmp_path: Path, executor: dict, gate) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "base_model": SOURCES[0], "models": list(SOURCES[1:]), "methods": ["task_arithmetic", "ties"],
        "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}}}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "space": "space.yaml", "objectives": [{"task": "zoo_text"}, gate.objective], "fidelity": 4,
        "seed": 3, "optimizer": {"name": "random"}, "budget": {"trials": TRIALS},
        "executor": executor, "tracking": {"enabled": True}}))
    return tmp_path / "run.yaml"


def _cli(world, *args, cwd: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", *map(str, args)], cwd=cwd, env=_env(world),
                         capture_output=True, text=True, timeout=600)
    if check is not None:
        assert res.returncode == check, res.stdout + res.stderr
    return res


def _no_token_under(*roots: Path) -> None:
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert TOKEN.encode() not in p.read_bytes(), p


@pytest.mark.slow  # a pool search killed and resumed, then an export: ~1 min on 2 cores
def test_a_hub_search_survives_kill_9_pins_its_commits_and_matches_mergekit(world, tmp_path):
    gate = write_gate(tmp_path / "gate", passes=3)
    cfg = _write(tmp_path, {"kind": "pool", "workers": 2, "torch_threads": 1}, gate)
    run_dir = tmp_path / "run"
    done = search_killed_at_gate(cfg, run_dir, gate, 3, cwd=tmp_path, env=_env(world))
    log = tmp_path / "run.search.log"
    resumed = _cli(world, "resume", run_dir, cwd=tmp_path)
    after = evaluations(run_dir)
    assert {(e.id, e.recipe_hash) for e in done} <= {(e.id, e.recipe_hash) for e in after}
    assert len({e.trial for e in after}) == TRIALS and f"{TRIALS} trials in the run" in resumed.stdout

    # The run recorded the commit each id resolved to.
    recorded = yaml.safe_load((run_dir / "sources.json").read_text())["sources"]
    commits = world["commits"]
    assert recorded["org/base"]["hub"] == {"repo": "org/base", "commit": commits["org/base"]}
    assert recorded["org/add"]["hub"]["commit"] == commits["org/add"]
    assert recorded["org/base+org/rev-lora"]["hub"] == {"repo": "org/rev-lora", "commit": commits["org/rev-lora"]}

    # The branch of org/add moves: an export still pins what was searched; a resume is refused.
    moved = put_in_cache(world["cache"], "org/add", world["zoo"] / "rev", salt="v2")
    try:
        _cli(world, "export", run_dir, "--out", tmp_path / "model", cwd=tmp_path)
        refused = _cli(world, "resume", run_dir, "--trials", TRIALS + 2, cwd=tmp_path, check=2)
        assert "org/add now resolves to Hub commit" in refused.stderr + refused.stdout
        _cli(world, "resume", run_dir, "--trials", TRIALS + 2, "--allow-changed-sources", cwd=tmp_path)
    finally:
        put_in_cache(world["cache"], "org/add", world["zoo"] / "add")  # main back where it was
    assert moved != commits["org/add"]

    exported = yaml.safe_load((tmp_path / "model" / "evomerge_recipe.yaml").read_text())
    pinned = {f"org/base@{commits['org/base']}", f"org/add@{commits['org/add']}",
              f"org/base@{commits['org/base']}+org/rev-lora@{commits['org/rev-lora']}"}
    named = {exported.get("base_model")} | {m["model"] for m in exported["models"]}
    assert named <= pinned and exported["base_model"] == f"org/base@{commits['org/base']}"
    text = (tmp_path / "model" / "mergekit_config.yml").read_text()
    assert str(world["cache"]) not in text and "snapshots" not in text

    # mergekit's merge of the same recipe, its Hub ids replaced by the snapshot directories.
    local = {f"{repo}@{c}": str(snapshot_dir(world["cache"], repo, c)) for repo, c in commits.items()}
    config = yaml.safe_load(text)
    for entry in [config, *config["models"]]:
        for key in ("model", "base_model"):
            if key in entry:
                entry[key] = "+".join(local[side] for side in entry[key].split("+"))
    expected = run_mergekit(config, tmp_path / "mk", lora_cache=tmp_path / "lora-cache")
    got = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)

    _no_token_under(run_dir, tmp_path / "model", tmp_path / "gate")
    assert TOKEN not in log.read_text() + resumed.stdout + resumed.stderr + refused.stdout + refused.stderr


@pytest.mark.ray
def test_a_hub_search_runs_on_ray(world, tmp_path):
    gate = write_gate(tmp_path / "gate")  # holds nothing: the objective only
    cfg = _write(tmp_path, {"kind": "ray", "workers": 2, "resources": {"num_cpus": 1}}, gate)
    res = _cli(world, "search", cfg, "--out", tmp_path / "run", cwd=tmp_path)
    assert len({e.trial for e in evaluations(tmp_path / "run")}) == TRIALS, res.stdout
    recorded = yaml.safe_load((tmp_path / "run" / "sources.json").read_text())["sources"]
    assert {r["hub"]["repo"] for r in recorded.values()} == {"org/base", "org/add", "org/rev-lora"}
    _no_token_under(tmp_path / "run")
    assert TOKEN not in res.stdout + res.stderr


def test_a_moved_branch_is_a_changed_source(hub_cache, untied_family, tmp_path):
    """Fast twin of the resume above: the fingerprints record the commit, and a branch that moved
    is refused even when the files it points at are the same bytes."""
    from evomerge.errors import EvomergeError
    from evomerge.io.sources import resolve_sources
    from evomerge.search import fingerprints

    first = put_in_cache(hub_cache, "org/base", untied_family["base"])
    fingerprints.record(tmp_path, fingerprints.fingerprint_sources(resolve_sources(["org/base"])))
    second = put_in_cache(hub_cache, "org/base", untied_family["base"], salt="same files, new commit")
    now = resolve_sources(["org/base"])
    with pytest.raises(EvomergeError, match=rf"org/base now resolves to Hub commit {second} \(the run started on {first}"):
        fingerprints.check_unchanged(tmp_path, now, allow_changed=False, log=lambda s: None)
    logs = []
    prints, _ = fingerprints.check_unchanged(tmp_path, now, allow_changed=True, log=logs.append)
    assert prints["sources"]["org/base"]["hub"]["commit"] == second and "changed sources" in logs[0]


def test_two_adapters_of_one_name_get_genes_of_their_own(tmp_path):
    """``org/base+alice/lora`` and ``org/base+bob/lora`` both end in ``lora``: each gets its own
    weight gene, and decoding gives each its own value."""
    from evomerge.search.space import ParameterSpace

    space = ParameterSpace.model_validate({
        "base_model": "org/base", "models": ["org/base+alice/lora", "org/base+bob/lora"],
        "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.0, "high": 1.0}}})
    names = [g.name for g in space.genes()]
    assert len(names) == len(set(names)) == 2, names
    recipe = space.decode([0.25, 0.75])
    assert [m.parameters["weight"] for m in recipe.models] == [0.25, 0.75]
