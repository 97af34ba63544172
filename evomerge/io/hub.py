"""Models named by Hugging Face Hub id (``org/name``, ``org/name@revision``), resolved to a
snapshot directory of the local Hub cache.

Why here and not in ``from_pretrained``: a search resolves its sources once, in the controller,
and hands workers plain directories, so a thousand candidates never touch the network and a run
can record the exact commit each id stood for. The rules:

* the cache first (``HF_HUB_CACHE`` / ``HF_HOME``, as ``huggingface_hub`` lays it out); a
  download only when the cache lacks the revision or a needed file and downloads are allowed
  (not ``HF_HUB_OFFLINE``), with the library's own progress bars;
* only what a merge or an evaluation reads: configs, safetensors, tokenizer files (pickle
  weights only with ``allow_pickle``); a snapshot is checked here for the files it needs,
  since the cache can hold a partial one (an interrupted download, a file fetched alone);
* ``HF_TOKEN`` is the library's business: it is sent by ``huggingface_hub`` and never read,
  echoed or recorded by evomerge.

A resolved directory keeps its identity in its path (``models--org--name/snapshots/<commit>``):
``snapshot_identity`` reads it back, so a run pins ``org/name@<commit>`` in what it exports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import CheckpointError

# ``org/name`` with an optional ``@revision`` (a branch, tag or commit; branches may hold "/").
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[^\s@]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# What a merge or an evaluation reads, at the top of a repo (subfolders hold ONNX exports, original
# checkpoints and the like: never fetched). Weights come second, once the index says which shards.
SMALL_PATTERNS = ["*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
MODEL_PATTERNS = [*SMALL_PATTERNS, "*.safetensors"]
ADAPTER_PATTERNS = ["adapter_config.json", "adapter_model.safetensors"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
SUBFOLDERS = ["*/*"]
DUPLICATE_WEIGHTS = ["consolidated*"]  # a second copy of the weights in another layout (Mistral)


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo

    def pinned(self, commit: str) -> str:
        return f"{self.repo}@{commit}"


def parse_hub_id(ref: str) -> HubId | None:
    """``ref`` as a Hub id, or None when it cannot be one (an absolute or ``./`` path, more
    than two parts, spaces)."""
    if ref.startswith((".", "/", "~")) or "\\" in ref:
        return None
    m = _HUB_ID.match(ref)
    if m is None or ".." in m["repo"] or "--" in m["repo"]:
        return None
    from huggingface_hub.utils import validate_repo_id

    try:  # the Hub's own rules (no trailing '.' or '-', no '.git', length, ASCII)
        validate_repo_id(m["repo"])
    except ValueError:
        return None
    return HubId(m["repo"], m["rev"])


def snapshot_identity(path: str | Path) -> tuple[str, str] | None:
    """``(org/name, commit)`` of a directory of the Hub cache's layout, else None."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and _COMMIT.match(parts[-1]):
        repo_dir = parts[-3]
        if repo_dir.startswith("models--"):
            return repo_dir[len("models--"):].replace("--", "/", 1), parts[-1]
    return None


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def fetch_command(hub_id: HubId, *, adapter: bool = False, allow_pickle: bool = False) -> str:
    """The ``hf download`` command that fetches what evomerge reads (``--include`` takes one
    pattern each time it is given)."""
    import shlex

    patterns = ADAPTER_PATTERNS if adapter else MODEL_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    rev = f" --revision {shlex.quote(hub_id.revision)}" if hub_id.revision else ""
    includes = " ".join(f"--include {shlex.quote(p)}" for p in patterns)
    return f"hf download {hub_id.repo}{rev} {includes} --exclude '*/*'"


def missing_files(snapshot: Path, *, adapter: bool = False, allow_pickle: bool = False) -> list[str]:
    """What a merge or an evaluation needs that ``snapshot`` lacks (empty: complete)."""
    if adapter:
        return [f for f in ADAPTER_PATTERNS if not (snapshot / f).is_file()]
    missing = [] if (snapshot / "config.json").is_file() else ["config.json"]
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return [*missing, f"{index.name} (unreadable: not a safetensors index)"]
        return missing + [s for s in shards if not (snapshot / s).is_file()]
    if any(snapshot.glob("*.safetensors")):
        return missing
    if allow_pickle and any(p for pat in PICKLE_PATTERNS for p in snapshot.glob(pat)):
        return missing
    return [*missing, "model.safetensors (or a sharded checkpoint with its index)"]


def resolve_hub(hub_id: HubId, *, adapter: bool = False, allow_pickle: bool = False) -> Path:
    """The snapshot directory of ``hub_id`` holding what it needs: from the cache, else downloaded
    (online only). A one-paragraph ``CheckpointError`` names the repo and the fix otherwise."""
    cached = _cached_snapshot(hub_id, adapter=adapter)
    if cached is not None and not missing_files(cached, adapter=adapter, allow_pickle=allow_pickle):
        return cached
    if cached is not None and not adapter and not missing_files(cached, adapter=True):
        return cached  # an adapter named as a model: the caller says so
    if offline():
        raise _not_available(hub_id, cached, adapter=adapter, allow_pickle=allow_pickle)
    got = _download(hub_id, adapter=adapter, allow_pickle=allow_pickle)
    lacking = missing_files(got, adapter=adapter, allow_pickle=allow_pickle)
    if lacking:
        kind = "an adapter's" if adapter else "a model's"
        pickle = "" if adapter or allow_pickle else (
            " If it ships only pickle weights (.bin), pass --allow-pickle (they are loaded with "
            "weights_only=True) or convert them to safetensors.")
        raise CheckpointError(
            f"Hub repo {hub_id} (commit {got.name}) lacks {kind} files: {', '.join(lacking)}. "
            f"Check that the id names a {'PEFT LoRA adapter' if adapter else 'Transformers model'} "
            f"repo.{pickle}"
        )
    return got


def snapshot_complete(path: str | Path) -> bool:
    """Whether a resolved directory holds what it needs (a model's or an adapter's files)."""
    path = Path(path)
    adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    return path.is_dir() and not missing_files(path, adapter=adapter)


def fetch_snapshot(path: str | Path) -> bool:
    """Download the Hub snapshot ``path`` names (``.../models--org--name/snapshots/<commit>``)
    into the cache that holds that path; True if it is complete afterwards. For a worker node
    that lacks what the controller resolved: nothing is fetched offline or for other paths."""
    identity = snapshot_identity(path)
    if identity is not None and not snapshot_complete(path) and not offline():
        repo, commit = identity
        try:
            _fetch(repo, commit, cache=str(Path(path).parents[2]))
        except Exception:  # noqa: BLE001 - the caller reports the path as missing, with the fix
            return False
    return snapshot_complete(path) if identity is not None else Path(path).exists()


def _cached_snapshot(hub_id: HubId, *, adapter: bool = False) -> Path | None:
    """The cached snapshot of ``hub_id``, complete or not (``missing_files`` judges it), or None.
    huggingface_hub raises ``IncompleteSnapshotError`` for a snapshot lacking files its cached
    tree lists (a README evomerge never fetched, say): that snapshot is still the one wanted."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id.repo, revision=hub_id.revision, local_files_only=True,
                                      allow_patterns=ADAPTER_PATTERNS if adapter else MODEL_PATTERNS))
    except IncompleteSnapshotError as e:
        return Path(e.snapshot_path)
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _fetch(repo: str, revision: str | None, *, adapter: bool = False, allow_pickle: bool = False,
           cache: str | None = None) -> Path:
    """Download what a merge reads of ``repo`` at ``revision``: the small files first, then the
    weights the index lists (or the one checkpoint file), never subfolders or duplicate layouts."""
    from huggingface_hub import snapshot_download

    def get(patterns, rev, ignore=()) -> Path:
        return Path(snapshot_download(repo, revision=rev, allow_patterns=patterns, cache_dir=cache,
                                      ignore_patterns=[*SUBFOLDERS, *ignore]))

    if adapter:
        return get(ADAPTER_PATTERNS, revision)
    got = get(SMALL_PATTERNS, revision)
    index = got / "model.safetensors.index.json"
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    except (ValueError, KeyError, TypeError, AttributeError):
        shards = []
    got = get(shards or ["model.safetensors"], got.name)
    if missing_files(got):
        got = get(["*.safetensors"], got.name, DUPLICATE_WEIGHTS)
    if allow_pickle and missing_files(got):
        got = get(PICKLE_PATTERNS, got.name)
    return got


def _download(hub_id: HubId, *, adapter: bool, allow_pickle: bool) -> Path:
    from huggingface_hub import errors as hub_errors

    try:
        return _fetch(hub_id.repo, hub_id.revision, adapter=adapter, allow_pickle=allow_pickle)
    except hub_errors.GatedRepoError:
        raise CheckpointError(
            f"Hub repo {hub_id.repo} is gated: its files need an account that accepted its terms. "
            f"Accept them on the repo's page, then log in with `hf auth login` or set HF_TOKEN to a "
            f"token of that account (evomerge passes it to huggingface_hub and never records it)."
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise CheckpointError(
            f"Hub repo {hub_id.repo} has no revision {hub_id.revision!r}. Give an existing branch, "
            f"tag or commit after the @ (or none, for the default branch)."
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"Model {hub_id.repo} is neither a local directory nor a repo on the Hugging Face Hub (or "
            f"it is private: log in with `hf auth login` or set HF_TOKEN). Fix the id, or give the "
            f"path of a local model directory."
        ) from None
    except (hub_errors.HfHubHTTPError, OSError, _transport_error()) as e:
        raise CheckpointError(
            f"Model {hub_id} is not a local directory, and as a Hub id it is not in the cache "
            f"{cache_dir()} and could not be downloaded ({type(e).__name__}: {_one_line(e)}). Check "
            f"the path or the network, or fetch it first with `"
            f"{fetch_command(hub_id, adapter=adapter, allow_pickle=allow_pickle)}`."
        ) from None


def _not_available(hub_id: HubId, cached: Path | None, *, adapter: bool, allow_pickle: bool) -> CheckpointError:
    fetch = fetch_command(hub_id, adapter=adapter, allow_pickle=allow_pickle)
    if cached is not None:
        lacking = missing_files(cached, adapter=adapter, allow_pickle=allow_pickle)
        return CheckpointError(
            f"Hub repo {hub_id}: the cached snapshot {cached} lacks {', '.join(lacking)} (an "
            f"interrupted or partial download), and downloads are off (HF_HUB_OFFLINE). Fetch the "
            f"missing files on a machine online with `{fetch}` into the same cache, or unset "
            f"HF_HUB_OFFLINE."
        )
    known = _cached_revisions(hub_id.repo)
    if known and hub_id.revision:
        where = (f"the cache {cache_dir()} holds {hub_id.repo} at {', '.join(known)} but not at "
                 f"revision {hub_id.revision!r}")
    else:
        where = f"it is not a local directory and not in the Hugging Face cache {cache_dir()}"
    return CheckpointError(
        f"Model {hub_id}: {where}, and downloads are off (HF_HUB_OFFLINE). Fetch it on a machine "
        f"online with `{fetch}` (HF_HUB_CACHE or HF_HOME pointing at this cache), unset "
        f"HF_HUB_OFFLINE to let evomerge download it, or fix the id or path."
    )


def _cached_revisions(repo: str) -> list[str]:
    """The branches and commits the cache holds for ``repo`` (for an error message)."""
    root = Path(cache_dir()) / f"models--{repo.replace('/', '--')}"
    refs = sorted(p.name for p in (root / "refs").glob("*") if p.is_file())
    commits = sorted(p.name[:12] for p in (root / "snapshots").glob("*") if p.is_dir())
    return refs + commits


def _transport_error() -> type[BaseException]:
    """The HTTP client's own errors (a proxy, a timeout after the retries), which are not OSError."""
    try:
        import httpx2

        return httpx2.HTTPError
    except ImportError:  # an older huggingface_hub, on httpx
        import httpx

        return httpx.HTTPError


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")
