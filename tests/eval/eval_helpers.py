"""Task files for evaluator tests: a task YAML and its per-split data in a tmp dir."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_task(tmp: Path, name: str, config: dict, data: dict[str, list] | None = None) -> Path:
    """A task YAML in ``tmp`` with JSONL (rows are dicts) or text (rows are str) data per split."""
    for split, rows in (data or {}).items():
        ext = "txt" if rows and isinstance(rows[0], str) else "jsonl"
        path = tmp / "data" / name / f"{split}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == "txt":
            path.write_text("".join(rows))
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
