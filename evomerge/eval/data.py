"""Local task data: JSONL readers, split paths and nested fidelity subsets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.errors import EvomergeError


class TaskDataError(EvomergeError):
    pass


def split_path(root: Path, pattern: str, split: str, *, field: str = "data") -> Path:
    """``pattern`` (relative to ``root``) with ``{split}`` filled in; must exist."""
    if "{split}" not in pattern:
        raise TaskDataError(
            f"{field}: {pattern!r} has no {{split}} placeholder; write e.g. "
            f"'data/addition/{{split}}.jsonl' so the search and test splits stay apart."
        )
    path = (root / pattern.format(split=split)).resolve()
    if not path.is_file():
        raise TaskDataError(
            f"{field}: no data for split {split!r} at {path}. Generate it "
            f"(`evomerge zoo data` for the zoo's tasks) or fix the path in the task config."
        )
    return path


def read_jsonl(path: Path, required: dict[str, type | tuple[type, ...]]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; each must have ``required`` keys of the given types."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TaskDataError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a task's data is JSON lines in "
            f"UTF-8: regenerate or re-save the file."
        ) from None
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read the task data ({e.strerror}); check the file.") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{path}:{lineno}: expected a JSON object per line.")
        for key, typ in required.items():
            if key not in row:
                raise TaskDataError(f"{path}:{lineno}: missing field {key!r}.")
            if not isinstance(row[key], typ):
                raise TaskDataError(
                    f"{path}:{lineno}: field {key!r} should be {_type_name(typ)}, "
                    f"got {type(row[key]).__name__}."
                )
        rows.append(row)
    if not rows:
        raise TaskDataError(
            f"{path}: no examples (the file is empty); a task needs one JSON object per line, e.g. "
            f"{{\"prompt\": ..., \"answer\": ...}}: fill it, or fix `data:` in the task config."
        )
    return rows


def _type_name(typ) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def nested_subset(n: int, k: int | None, seed: int) -> list[int]:
    """Indices of a deterministic subset of ``k`` of ``n`` examples.

    Subsets of one seed are nested (the first 32 are inside the first 128), so a
    search can screen on few examples and promote to more without reshuffling.
    """
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise TaskDataError(f"fidelity {k} is not a positive number of examples.")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[:k])
