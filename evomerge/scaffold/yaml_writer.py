"""Commented YAML for the files evomerge writes for a user, and writing them all or none.

A converted or scaffolded config is read by people before it is run, so every field
carries a comment saying where its value came from. ``Commented(value, comment)`` marks
a value; ``render`` writes a document of plain values and ``Commented`` ones as YAML with
each comment on the lines above its key (short lists and ``{low, high}`` mappings in flow
style), and ``plain`` gives the document without its comments, which is what
``yaml.safe_load`` of the rendered text returns. ``write_files`` puts several such files
into one directory atomically: all of them, or none (nothing is left half-written).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.errors import OutputExistsError

WIDTH = 100


@dataclass(frozen=True)
class Commented:
    """A value and the comment written above it (where it came from, what it means)."""

    value: Any
    comment: str = ""


def plain(node: Any) -> Any:
    """``node`` with every ``Commented`` replaced by its value (the document YAML loads back)."""
    if isinstance(node, Commented):
        return plain(node.value)
    if isinstance(node, Mapping):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    return node


def render(doc: Mapping[str, Any], header: str = "") -> str:
    """``doc`` as YAML text, each ``Commented`` value's comment above its key, ``header`` on top."""
    lines = _comment(header, "")
    _mapping(doc, "", lines)
    return "\n".join(lines) + "\n"


def _comment(text: str, indent: str) -> list[str]:
    out = []
    for paragraph in text.strip().splitlines() if text.strip() else []:
        wrapped = textwrap.wrap(paragraph, WIDTH - len(indent) - 2, break_long_words=False,
                                break_on_hyphens=False) or [""]
        out += [f"{indent}# {w}".rstrip() for w in wrapped]
    return out


def _scalar(value: Any) -> str:
    import yaml

    if isinstance(value, str) and any(c in value for c in "\n\r\t"):
        return json.dumps(value)  # one line; a JSON string is a YAML double-quoted scalar
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True).strip()
    return text.removesuffix("\n...").strip()


def _is_flow(value: Any) -> bool:
    """Scalars, and lists or mappings of scalars: written on the key's line."""
    if isinstance(value, Mapping):
        return all(not isinstance(v, (Mapping, list, tuple, Commented)) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(not isinstance(v, (Mapping, list, tuple, Commented)) for v in value)
    return True


def _flow(value: Any, indent: str, used: int) -> str:
    """A flow value; a long list of scalars wraps onto lines indented below its key."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
    if not isinstance(value, (list, tuple)):
        return _scalar(value)
    items = [_scalar(v) for v in value]
    text = "[" + ", ".join(items) + "]"
    if used + len(text) <= WIDTH or not items:
        return text
    rows, row, start = [], "[" + items[0], used
    for item in items[1:]:
        if start + len(row) + len(item) + 3 > WIDTH:  # ", " + item + "," or "]"
            rows.append(row + ",")
            row, start = item, len(indent) + 2
        else:
            row += ", " + item
    rows.append(row + "]")
    return ("\n" + indent + "  ").join(rows)


def _mapping(doc: Mapping[str, Any], indent: str, lines: list[str], first_prefix: str | None = None) -> None:
    for i, (key, node) in enumerate(doc.items()):
        comment, value = (node.comment, node.value) if isinstance(node, Commented) else ("", node)
        prefix = indent
        if i == 0 and first_prefix is not None:
            prefix = first_prefix  # a sequence item's first key: its comment is above the dash
        else:
            lines += _comment(comment, indent)
        head = f"{prefix}{_scalar(key)}:"
        if _is_flow(value):
            lines.append(f"{head} {_flow(value, indent, len(head) + 1)}")
        elif isinstance(value, Mapping):
            lines.append(head)
            _mapping(value, indent + "  ", lines)
        else:
            lines.append(head)
            _sequence(value, indent + "  ", lines)


def _sequence(items, indent: str, lines: list[str]) -> None:
    for node in items:
        comment, value = (node.comment, node.value) if isinstance(node, Commented) else ("", node)
        if isinstance(value, Mapping) and value:
            first = next(iter(value.values()))
            if isinstance(first, Commented) and first.comment:
                comment = f"{comment}\n{first.comment}" if comment else first.comment
            lines += _comment(comment, indent)
            _mapping(value, indent + "  ", lines, first_prefix=indent + "- ")
        else:
            lines += _comment(comment, indent)
            lines.append(f"{indent}- {_flow(value, indent + '  ', len(indent) + 2)}")


def write_files(out: Path, files: Mapping[str, str], *, force: bool = False) -> list[Path]:
    """Write ``files`` (name -> text) into the directory ``out``, all of them or none; returns
    their paths.

    ``out`` may be missing or empty; one that holds anything is refused unless ``force``, and
    then only the named files are replaced (anything else there is kept). The files are
    written and synced under temporary names first, so an error leaves ``out`` as it was.
    """
    out = Path(out)
    for name in files:
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"{name!r} is not a plain file name")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a directory. Choose a directory for --out.")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise OutputExistsError(
            f"--out {out} already holds files ({shown}). Choose an empty or new directory for "
            f"--out, or pass --force to replace {' and '.join(files)} there (other files are kept)."
        )
    if not held:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            stage.chmod(0o777 & ~_umask())  # mkdtemp's 0700 is for the staging, not the result
            for name, text in files.items():
                _write_synced(stage / name, text)
            os.replace(stage, out)  # onto a missing or empty directory: atomic
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _sync_dir(out.parent)
        return [out / name for name in files]
    staged: dict[str, Path] = {}
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            os.close(fd)
            staged[name] = Path(tmp)
            Path(tmp).chmod(0o666 & ~_umask())  # mkstemp's 0600 is for the staging, not the result
            _write_synced(Path(tmp), text)
        for name, tmp in staged.items():
            os.replace(tmp, out / name)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    _sync_dir(out)
    return [out / name for name in files]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the platform lets a directory be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
