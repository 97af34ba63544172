"""Hub ids resolve through a local Hugging Face cache (offline), or a (simulated) download."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import CheckpointError
from evomerge.io.hub import HubId, parse_hub_id, snapshot_identity
from evomerge.io.sources import pinned_ref, resolve_model_path, resolve_sources
from evomerge.testing.hub_cache import move_branch, put_in_cache, snapshot_dir

TOKEN = "hf_PLANTEDtokenNEVERtoBEseen0123456789"


@pytest.mark.parametrize(("ref", "expected"), [
    ("org/name", HubId("org/name")),
    ("meta-llama/Llama-3.2-1B@main", HubId("meta-llama/Llama-3.2-1B", "main")),
    ("org/m.v1_x@refs/pr/3", HubId("org/m.v1_x", "refs/pr/3")),
    ("./org/name", None),
    ("/abs/org/name", None),
    ("a/b/c", None),
    ("name", None),
    ("org/na me", None),
    ("org/a@b@c", None),
    ("org/..x", None),
])
def test_what_reads_as_a_hub_id(ref, expected):
    assert parse_hub_id(ref) == expected


def test_a_snapshot_directory_names_its_repo_and_commit(tmp_path):
    commit = "a" * 40
    assert snapshot_identity(tmp_path / "models--org--my-model" / "snapshots" / commit) == ("org/my-model", commit)
    assert snapshot_identity(tmp_path / "org" / "my-model") is None
    assert snapshot_identity(tmp_path / "models--org--m" / "snapshots" / "main") is None


def test_ids_resolve_from_the_cache_by_branch_and_commit(hub_cache, untied_family):
    commit = put_in_cache(hub_cache, "org/base", untied_family["base"])
    snap = snapshot_dir(hub_cache, "org/base", commit)
    for ref in ("org/base", "org/base@main", f"org/base@{commit}"):
        assert resolve_model_path(ref) == snap
    newer = put_in_cache(hub_cache, "org/base", untied_family["expert0"], branch="main")
    assert resolve_model_path("org/base") == snapshot_dir(hub_cache, "org/base", newer)
    assert resolve_model_path(f"org/base@{commit}") == snap  # a pinned commit stays put


def test_a_local_directory_wins_over_a_hub_id_of_the_same_spelling(hub_cache, untied_family, tmp_path, monkeypatch):
    put_in_cache(hub_cache, "org/base", untied_family["base"])
    shutil.copytree(untied_family["expert0"], tmp_path / "work" / "org" / "base")
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_model_path("org/base") == Path("org/base")


def test_offline_and_not_cached_names_the_repo_the_cache_and_the_fetch(hub_cache):
    with pytest.raises(CheckpointError) as err:
        resolve_model_path("org/absent")
    text = str(err.value)
    for part in ("org/absent", str(hub_cache), "HF_HUB_OFFLINE", "hf download org/absent"):
        assert part in text, text


def test_an_unknown_revision_names_what_the_cache_holds(hub_cache, untied_family):
    commit = put_in_cache(hub_cache, "org/base", untied_family["base"])
    with pytest.raises(CheckpointError, match=rf"holds org/base at main, {commit[:12]} but not at revision 'v9'"):
        resolve_model_path("org/base@v9")


def _sharded(src: Path, out: Path) -> Path:
    """``src`` as two shards with an index."""
    out.mkdir(parents=True)
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in halves.items():
        save_file({n: state[n] for n in part}, str(out / file), metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}))
    shutil.copy(src / "config.json", out / "config.json")
    return out


def test_a_snapshot_missing_a_shard_is_refused_naming_the_shard(hub_cache, untied_family, tmp_path):
    sharded = _sharded(untied_family["base"], tmp_path / "sharded")
    put_in_cache(hub_cache, "org/sharded", sharded, skip=("model-00002-of-00002.safetensors",))
    with pytest.raises(CheckpointError) as err:
        resolve_model_path("org/sharded")
    text = str(err.value)
    assert "model-00002-of-00002.safetensors" in text and "partial download" in text and "hf download" in text


class FakeHub:
    """``snapshot_download`` as the Hub would answer it: the cache as it is for
    ``local_files_only``, else a "download" of ``published`` into the cache (or an error)."""

    def __init__(self, cache: Path, published: dict[str, Path], error: Exception | None = None):
        self.cache, self.published, self.error, self.calls = cache, published, error, []

    def __call__(self, repo_id, *, revision=None, local_files_only=False, allow_patterns=None,
                 ignore_patterns=None, **kw):
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append({"repo": repo_id, "revision": revision, "local": local_files_only,
                           "patterns": allow_patterns, "ignore": ignore_patterns})
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        if self.error is not None:
            raise self.error
        return str(snapshot_dir(self.cache, repo_id, put_in_cache(self.cache, repo_id, self.published[repo_id])))


def test_online_an_uncached_id_is_downloaded_without_pickle_files(hub_cache, untied_family, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub(hub_cache, {"org/base": untied_family["base"]})
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    got = resolve_model_path("org/base")
    assert (got / "model.safetensors").is_file() and snapshot_identity(got)[0] == "org/base"
    downloads = [c for c in fake.calls if not c["local"]]
    asked = [p for c in downloads for p in c["patterns"]]
    assert "*.json" in asked and "model.safetensors" in asked  # the small files, then the weights
    assert not any(p.endswith((".bin", ".pt")) for p in asked)
    assert all(c["ignore"][0] == "*/*" for c in downloads)  # no subfolders


def _http_error(cls, status: int):
    import httpx2

    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/x")
    return cls(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(("error", "says"), [
    ("GatedRepoError", "is gated"),
    ("RepositoryNotFoundError", "neither a local directory nor a repo on the Hugging Face Hub"),
    ("RevisionNotFoundError", "has no revision"),
])
def test_online_refusals_are_one_paragraph_without_the_token(hub_cache, monkeypatch, error, says):
    from huggingface_hub import constants, errors

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake = FakeHub(hub_cache, {}, _http_error(getattr(errors, error), 401 if error == "GatedRepoError" else 404))
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    with pytest.raises(CheckpointError) as err:
        resolve_model_path("org/x@v2")
    text = str(err.value)
    assert says in text and "org/x" in text and TOKEN not in text and "\n" not in text


def test_pinned_refs_name_the_commit_and_local_paths_stay_absolute(hub_cache, untied_family):
    commit = put_in_cache(hub_cache, "org/base", untied_family["base"])
    dirs = resolve_sources(["org/base", str(untied_family["expert0"])])
    assert pinned_ref("org/base", dirs) == f"org/base@{commit}"
    assert pinned_ref(str(untied_family["expert0"]), dirs) == str(untied_family["expert0"].resolve())


def test_a_merge_of_hub_ids_equals_the_merge_of_their_directories(hub_cache, untied_family, tmp_path):
    from evomerge.merge.engine import merge_to_disk
    from evomerge.recipe import Recipe

    for name in ("base", "expert0", "expert1"):
        put_in_cache(hub_cache, f"org/{name}", untied_family[name])

    def recipe(ref):
        return Recipe.from_dict({"merge_method": "ties", "base_model": ref("base"), "dtype": "float32",
                                 "models": [{"model": ref(m), "parameters": {"weight": 0.6, "density": 0.5}}
                                            for m in ("expert0", "expert1")]})

    merge_to_disk(recipe(lambda m: f"org/{m}"), tmp_path / "hub")
    merge_to_disk(recipe(lambda m: str(untied_family[m])), tmp_path / "local")
    a, b = load_file(str(tmp_path / "hub" / "model.safetensors")), load_file(str(tmp_path / "local" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resolving_again_after_the_branch_moved_gives_the_new_commit(hub_cache, untied_family):
    old = put_in_cache(hub_cache, "org/base", untied_family["base"])
    new = put_in_cache(hub_cache, "org/base", untied_family["base"], salt="v2", branch=None)
    move_branch(hub_cache, "org/base", "main", new)
    assert snapshot_identity(resolve_model_path("org/base"))[1] == new != old


def test_a_node_lacking_a_snapshot_fetches_it_at_the_controllers_path(hub_cache, untied_family, tmp_path, monkeypatch):
    """The Ray per-node check: a snapshot path the controller resolved, missing on a node, is
    downloaded into the cache that holds that path (online), and stays missing offline."""
    from huggingface_hub import constants

    from evomerge.io.hub import fetch_snapshot

    node_cache = tmp_path / "node-cache"
    commit = put_in_cache(tmp_path / "controller-cache", "org/base", untied_family["base"])
    wanted = snapshot_dir(node_cache, "org/base", commit)
    asked = []

    def hub(repo_id, *, revision=None, cache_dir=None, allow_patterns=None, **kw):
        asked.append((repo_id, revision, cache_dir))
        got = put_in_cache(Path(cache_dir), repo_id, untied_family["base"], branch=None)
        return str(snapshot_dir(Path(cache_dir), repo_id, got))

    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    assert not fetch_snapshot(wanted)  # offline: nothing is fetched
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert fetch_snapshot(wanted) and (wanted / "model.safetensors").is_file()
    assert asked and set(asked) == {("org/base", commit, str(node_cache))}
    assert not fetch_snapshot(tmp_path / "not-a-snapshot")


def test_the_fetch_command_gives_each_pattern_its_own_include():
    """``hf download --include`` takes one pattern per flag: further words would be read as file
    names, and then the includes are dropped."""
    import shlex

    from evomerge.io.hub import MODEL_PATTERNS, fetch_command

    words = shlex.split(fetch_command(HubId("org/m", "refs/pr/3")))
    assert words[:5] == ["hf", "download", "org/m", "--revision", "refs/pr/3"]
    rest = words[5:]
    assert rest[-2:] == ["--exclude", "*/*"]
    pairs = list(zip(rest[:-2:2], rest[1:-2:2], strict=True))
    assert all(flag == "--include" for flag, _ in pairs) and [p for _, p in pairs] == MODEL_PATTERNS


@pytest.mark.parametrize("ref", ["runs/merged.", "out/model.git", "org/" + "x" * 97, "org/naïve"])
def test_what_the_hub_would_refuse_is_a_path_not_an_id(ref):
    assert parse_hub_id(ref) is None
