"""The one strict base for typed configs, and the one way their errors are worded.

Every typed document (recipe, run config, search space, task config) is a
pydantic model that refuses unknown fields, and a validation failure becomes a
single sentence per bad field, ``field.path: what is wrong``, so that the
user-facing error stays one paragraph. pydantic is imported here, not by
``evomerge.errors``, so that ``import evomerge`` stays light.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config model: unknown keys are errors (a misspelt option must not be ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Location parts that name a union member or a validator, not a field.
_MEMBER_PREFIXES = ("list[", "dict[", "tuple[", "function-", "literal[")
_MEMBER_NAMES = {"bool", "int", "float", "str", "none"}


def _is_member_tag(part: Any, tags: set[str]) -> bool:
    return isinstance(part, str) and (
        part in tags or part.lower() in _MEMBER_NAMES or part.startswith(_MEMBER_PREFIXES)
        or "[" in part
    )


def problems(err, tags: set[str] | frozenset[str] = frozenset(), model: type[BaseModel] | None = None) -> str:
    """A pydantic ``ValidationError`` as ``field.path: message; ...``: one entry per field (the
    first message of union members that all report the same bad value). ``tags``: extra
    discriminator tags that are not field names. ``model``: the validated class, so that an
    unknown field gets "did you mean" from the fields of the model it sits in."""
    seen: dict[str, str] = {}
    for e in err.errors():
        path = [p for p in e["loc"] if not _is_member_tag(p, set(tags))]
        loc = ".".join(str(p) for p in path)
        msg = e["msg"].removeprefix("Value error, ").rstrip(".")
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(path[-1]), _fields_at(model, path[:-1]), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? Else remove it" if close else "remove it or check its spelling"
            msg = f"unknown field; {hint}"
        seen.setdefault(loc, f"{loc}: {msg}" if loc else msg)
    return "; ".join(seen.values())


def _fields_at(model: Any, path: list) -> list[str]:
    """The field names of the model found by following ``path`` (field names and list indices)
    from ``model`` through its annotations; [] where the path leaves the models."""
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _model_in(fields[part].annotation)
    fields = getattr(model, "model_fields", None) or {}
    return [f.alias or name for name, f in fields.items()]


def _model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (itself, or inside Optional, list, dict or a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def yaml_problem(err: Exception) -> str:
    """A PyYAML error as one line that names where it is: ``line 4, column 3: expected <block
    end>, but found '<block mapping start>' (while parsing a block collection)``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None)
    context = getattr(err, "context", None)
    if problem is None:
        return " ".join(str(err).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    also = f" ({context})" if context else ""
    return f"{where}{problem}{also}"


def read_yaml_file(path, *, what: str, examples: str, error: type[Exception]):
    """The content of the YAML file ``path`` (a ``what``: "run config", ...), or ``error`` naming
    the file and the line when it is malformed, or why it cannot be read; ``examples`` says where
    working ones are."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML at {yaml_problem(e)}; fix the file there ({examples}).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({e}); check the path.") from None
