"""Fingerprints of a run's source models, so a resume notices weights that changed under it.

A resume replays the ledger's scores as they were recorded; if a source model
was re-downloaded, re-trained or replaced since, the old scores and the new
evaluations measure different models and the front mixes them silently.
``evomerge search`` therefore records, in ``RUN_DIR/sources.json``, a
fingerprint of every file of every source, and ``evomerge resume`` compares
and refuses a changed source (naming the model and the file) unless
``--allow-changed-sources``.

The fingerprint of a file, chosen to cost milliseconds on multi-GB checkpoints
rather than a full read:

* a safetensors file: its size, the sha256 of its header (the 8-byte length
  and the JSON listing every tensor's name, dtype, shape and byte range), and
  the sha256 of ``SAMPLES`` chunks of ``CHUNK`` bytes at evenly spaced offsets
  of the data (first and last chunk included);
* any other weight file (``.bin``/``.pt``): its size and the sampled chunks;
* small files (``config.json``, the shard index, tokenizer files under
  ``SMALL`` bytes): the sha256 of the whole file.

So a different architecture, dtype, shape, shard layout or length is always
caught; a same-size edit of tensor values is caught where it touches a sampled
chunk (a re-trained model changes every chunk; a single flipped value between
the samples is not). That is the trade: hashing 4 x 15 GB sources whole would
add minutes to every resume.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text

FILENAME = "sources.json"
VERSION = 1
SAMPLES = 16
CHUNK = 64 * 1024
SMALL = 1024 * 1024  # files below this are hashed whole
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SMALL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
                "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
                "tokenizer.model", "special_tokens_map.json", "vocab.json", "merges.txt",
                "adapter_config.json")


def file_fingerprint(path: Path) -> dict:
    """The fingerprint of one file (see the module docstring)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= SMALL or not path.name.endswith(_WEIGHT_SUFFIXES):
            return {"size": size, "sha256": hashlib.sha256(f.read()).hexdigest()}
        out: dict = {"size": size}
        start = 0
        if path.name.endswith(".safetensors"):
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            n = min(n, size - len(head))
            out["header_sha256"] = hashlib.sha256(head + f.read(n)).hexdigest()
            start = len(head) + n
        h = hashlib.sha256()
        span = max(size - start - CHUNK, 0)
        for i in range(SAMPLES):
            f.seek(start + span * i // max(SAMPLES - 1, 1))
            h.update(f.read(CHUNK))
        out["sample_sha256"] = h.hexdigest()
        return out


def model_fingerprint(model_dir: Path) -> dict[str, dict]:
    """File name -> fingerprint for the weights, index, config and tokenizer files of a model."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and (p.name.endswith(_WEIGHT_SUFFIXES) or p.name in _SMALL_FILES))
    return {p.name: file_fingerprint(p) for p in files}


def fingerprint_sources(sources: Mapping[str, Path]) -> dict:
    """The record for ``sources`` (reference -> model directory) as ``sources.json`` holds it."""
    return {"version": VERSION, "sources": {ref: _source_record(path) for ref, path in sources.items()}}


def _source_record(path: Path) -> dict:
    """A source's fingerprints, and for a Hub id the commit it resolved to (kept as resolved, not
    through the cache's symlinks, so the snapshot stays named)."""
    from evomerge.io.hub import snapshot_identity

    out: dict = {"path": str(Path(path).absolute()), "files": model_fingerprint(Path(path))}
    identity = snapshot_identity(Path(path).absolute())
    if identity is not None:
        out["hub"] = {"repo": identity[0], "commit": identity[1]}
    return out


def recorded_dirs(run_dir: Path) -> dict[str, Path]:
    """The directories the run's sources resolved to when fingerprinted (those that still exist)."""
    data = recorded(run_dir) or {"sources": {}}
    return {ref: Path(r["path"]) for ref, r in data["sources"].items()
            if isinstance(r, dict) and isinstance(r.get("path"), str) and Path(r["path"]).is_dir()}


def record(run_dir: Path, prints: dict) -> None:
    atomic_write_text(Path(run_dir) / FILENAME, json.dumps(prints, indent=1, sort_keys=True) + "\n")


def recorded(run_dir: Path) -> dict | None:
    """The run's recorded fingerprints, or None for a run started before they were recorded."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
            raise ValueError("no `sources` mapping")
        return data
    except (OSError, ValueError) as e:
        raise EvomergeError(
            f"{path} is damaged ({e}); it holds the fingerprints of the run's source models. "
            f"Delete it to resume without the check (`evomerge resume` records them anew)."
        ) from None


def changes(before: dict, now: dict) -> list[str]:
    """What changed from ``before`` to ``now``, one phrase per model and file."""
    out = []
    old, new = before.get("sources", {}), now.get("sources", {})
    for ref in sorted(set(old) | set(new)):
        if ref not in new:
            out.append(f"model {ref} is no longer a source of the space")
            continue
        if ref not in old:
            out.append(f"model {ref} was not a source when the run started")
            continue
        was, now_at = (old[ref].get("hub") or {}).get("commit"), (new[ref].get("hub") or {}).get("commit")
        if was and now_at and was != now_at:
            out.append(f"model {ref} now resolves to Hub commit {now_at} (the run started on {was}: "
                       f"the branch or tag moved)")
            continue
        a, b = old[ref].get("files", {}), new[ref].get("files", {})
        for name in sorted(set(a) | set(b)):
            if name not in b:
                out.append(f"{Path(new[ref]['path']) / name} (model {ref}) is gone")
            elif name not in a:
                out.append(f"{Path(new[ref]['path']) / name} (model {ref}) is new")
            elif a[name] != b[name]:
                what = "size" if a[name].get("size") != b[name].get("size") else (
                    "header" if a[name].get("header_sha256") != b[name].get("header_sha256") else "content")
                out.append(f"{Path(new[ref]['path']) / name} (model {ref}) changed ({what})")
    return out


def check_unchanged(run_dir: Path, sources: Mapping[str, Path], *, allow_changed: bool,
                    log: Callable[[str], None]) -> tuple[dict, bool]:
    """Compare the sources with the fingerprints the run recorded when it started.

    Returns ``(current fingerprints, whether the sources must be checked again)``: unchanged
    sources passed the pre-flight check when the run started. A change is refused unless
    ``allow_changed``; a run without fingerprints (older evomerge) resumes with a warning."""
    now = fingerprint_sources(sources)
    before = recorded(run_dir)
    if before is None:
        log(f"warning: {run_dir} has no fingerprints of its source models (a run started by an "
            f"older evomerge), so whether they changed since it started cannot be checked; they "
            f"are recorded now for the next resume")
        return now, True
    changed = changes(before, now)
    if not changed:
        return now, False
    if not allow_changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise EvomergeError(
            f"{run_dir}: a source model changed since the run started: {changed[0]}{more}. Its "
            f"recorded scores are of the old weights, so resuming would mix two different models' "
            f"results. Restore the original files, start a new run with `evomerge search`, or pass "
            f"--allow-changed-sources to resume anyway (the new fingerprints are recorded)."
        )
    log(f"warning: resuming with changed sources (--allow-changed-sources): {'; '.join(changed)}")
    return now, True
