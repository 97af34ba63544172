"""A local Hugging Face Hub cache laid out as ``huggingface_hub`` lays it out, for offline tests.

``models--org--name/`` holds ``blobs/<sha256>`` (the file contents), ``refs/<branch>`` (a commit
id), ``snapshots/<commit>/<file>`` (relative symlinks into ``blobs``) and ``trees/<commit>.json``
(the repo's file listing, which huggingface_hub 2.x saves with a download and checks a snapshot
against offline; it lists a README and .gitattributes too, as a real repo has, which a download
of selected files leaves out). ``put_in_cache`` adds a
directory's files as a new commit and points a branch at it, so a test can publish a model,
publish a new version (the branch moves) or leave a snapshot partial, with no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def repo_folder(cache: Path, repo: str) -> Path:
    return Path(cache) / f"models--{repo.replace('/', '--')}"


def put_in_cache(cache: Path, repo: str, model_dir: Path, *, branch: str | None = "main",
                 skip: tuple[str, ...] = (), salt: str = "") -> str:
    """Copy the files of ``model_dir`` into ``cache`` as a commit of ``repo``; returns the commit
    id (derived from the contents and ``salt``, so republishing the same files with another salt
    makes another commit). ``branch`` (None: none) is pointed at it; ``skip``: files left out,
    as an interrupted download leaves them."""
    root = repo_folder(cache, repo)
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    digest = hashlib.sha1(salt.encode())
    for f in files:
        digest.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
    commit = digest.hexdigest()
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in files:
        if f.name in skip:
            continue
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snapshot / f.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snapshot), link)
    listing = {f.name: {"size": f.stat().st_size, "blob_id": hashlib.sha1(f.read_bytes()).hexdigest()}
               for f in files}
    listing.update({name: {"size": 10, "blob_id": "0" * 40} for name in ("README.md", ".gitattributes")})
    (root / "trees").mkdir(exist_ok=True)
    (root / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    if branch is not None:
        move_branch(cache, repo, branch, commit)
    return commit


def move_branch(cache: Path, repo: str, branch: str, commit: str) -> None:
    refs = repo_folder(cache, repo) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / branch).write_text(commit)


def snapshot_dir(cache: Path, repo: str, commit: str) -> Path:
    return repo_folder(cache, repo) / "snapshots" / commit
