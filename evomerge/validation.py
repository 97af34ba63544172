"""The one strict base for typed configs, and the one way their errors are worded.

Every typed document (recipe, run config, search space, task config) is a
pydantic model that refuses unknown fields, and a validation failure becomes a
single sentence per bad field, ``field.path: what is wrong``, so that the
user-facing error stays one paragraph. pydantic is imported here, not by
``evomerge.errors``, so that ``import evomerge`` stays light.
"""

from __future__ import annotations

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


def problems(err, tags: set[str] | frozenset[str] = frozenset()) -> str:
    """A pydantic ``ValidationError`` as ``field.path: message; ...``: one entry per field (the
    first message of union members that all report the same bad value). ``tags``: extra
    discriminator tags that are not field names."""
    seen: dict[str, str] = {}
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not _is_member_tag(p, set(tags)))
        msg = e["msg"].removeprefix("Value error, ").rstrip(".")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        seen.setdefault(loc, f"{loc}: {msg}" if loc else msg)
    return "; ".join(seen.values())
