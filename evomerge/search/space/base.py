"""What every search space shares: genes, ranges, errors, loading and the registry of kinds.

A space is a pydantic model registered under its ``kind``; ``load_space`` reads a
YAML file and validates it with the class of its ``kind``. Validation gets a
``LoadContext`` (the file's folder and whether model directories may be read)
through pydantic's validation context, so a space can fill in what the models
say (``num_layers``) and read the recipes it references while it validates, and
every problem comes back as one sentence naming the file and the field.

A new kind is one module with a ``Space`` subclass (``kind: Literal["name"]``,
decorated with ``@register_space``) and one entry in ``SPACE_KINDS`` below (or,
outside this package, an ``evomerge.space_kinds`` entry point).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

from evomerge.errors import EvomergeError
from evomerge.recipe import Recipe
from evomerge.registry import Registry
from evomerge.validation import StrictModel, problems, read_yaml_file


class SearchSpaceError(EvomergeError):
    pass


@dataclass(frozen=True)
class Gene:
    """One coordinate of the unit cube: a range to scale to, integers to pick from, or choices."""

    name: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()
    integer: bool = False

    def value(self, u: float):
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.integer:  # equal shares of the cube for low, low + 1, ..., high
            span = int(self.high) - int(self.low)
            return int(self.low) + min(int(u * (span + 1)), span)
        return self.low + u * (self.high - self.low)

    def encode(self, value) -> float:
        """The unit-cube coordinate that decodes to ``value`` (a choice: the middle of its share)."""
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
            return (self.choices.index(value) + 0.5) / len(self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{value!r} is not a number")
        if not self.low <= value <= self.high:
            raise ValueError(f"{value} is outside {self.describe()}")
        if self.integer:
            if int(value) != value:
                raise ValueError(f"{value} is not an integer")
            span = int(self.high) - int(self.low)
            return (int(value) - int(self.low) + 0.5) / (span + 1)
        return (value - self.low) / (self.high - self.low)

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.integer:
            return f"integer {int(self.low)}..{int(self.high)}"
        return f"[{self.low:g}, {self.high:g}]"


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low == self.high:
            raise ValueError(
                f"the range is empty (low = high = {self.low:g}); give high a larger value, or "
                f"leave the parameter out of the search"
            )
        if not self.low < self.high:
            raise ValueError(
                f"low ({self.low:g}) must be below high ({self.high:g}); swap them"
                if self.low > self.high else f"low and high must be finite numbers (got {self.low}, {self.high})"
            )
        return self


@dataclass(frozen=True)
class LoadContext:
    """How a space is being loaded: relative paths resolve against ``where``;
    ``resolve`` allows reading model directories (their config.json) and the
    recipes a space references."""

    where: Path | None = None
    resolve: bool = False
    read_recipes: bool = True  # without any context (model_validate in code): read them

    @property
    def dirs(self) -> list[Path]:
        return [d for d in (self.where, Path.cwd()) if d is not None]


def load_context(info: ValidationInfo | None) -> LoadContext:
    ctx = info.context if info is not None else None
    if isinstance(ctx, dict) and isinstance(ctx.get("load"), LoadContext):
        return ctx["load"]
    return LoadContext()


class Space(StrictModel):
    """Base of every kind: the unit-cube genome and its decoding into a ``Recipe``."""
    kind: str

    def genes(self) -> list[Gene]:
        raise NotImplementedError

    @property
    def dimension(self) -> int:
        return len(self.genes())

    def decode(self, x: Sequence[float]) -> Recipe:
        raise NotImplementedError

    def source_models(self) -> list[str]:
        """Every model reference a decoded recipe can read, the one to build a resident model from first."""
        raise NotImplementedError

    def unit(self, x: Sequence[float], n: int | None = None) -> list[float]:
        """``x`` as floats clipped to [0, 1], checked against the gene count."""
        n = self.dimension if n is None else n
        values = [min(1.0, max(0.0, float(v))) for v in x]
        if len(values) != n:
            raise SearchSpaceError(f"genome has {len(values)} values; this space has {n} genes")
        return values

    def check_standalone(self) -> str | None:
        """A problem that only matters when this space is the whole file (not part of a joint one)."""
        return None

    @classmethod
    def load(cls: type[S], path: str | Path, *, resolve: bool = True) -> S:
        path = Path(path)
        return cls.from_raw(read_space_file(path), path, resolve=resolve)

    @classmethod
    def from_raw(cls: type[S], raw: dict, path: Path, *, resolve: bool = True) -> S:
        ctx = LoadContext(where=path.parent, resolve=resolve, read_recipes=resolve)
        try:
            space = cls.model_validate(raw, context={"load": ctx})
        except ValidationError as e:
            raise SearchSpaceError(
                f"{path}: invalid search space: {problems(e, UNION_TAGS, model=cls)}."
            ) from None
        problem = space.check_standalone()
        if problem:
            raise SearchSpaceError(f"{path}: invalid search space: {problem}.")
        if resolve and space.dimension == 0:
            raise SearchSpaceError(
                f"{path}: the search space has no genes: every choice is fixed, so there is nothing "
                f"to search. Give it a range, a method choice or a layer path to search (search_spaces/ "
                f"holds working examples), or merge the one recipe it describes with `evomerge merge`."
            )
        return space


S = TypeVar("S", bound=Space)

SPACE_KINDS: Registry[type[Space]] = Registry(
    "search space kind",
    {
        "parameter": "evomerge.search.space.parameter",
        "layer": "evomerge.search.space.layer",
        "slices": "evomerge.search.space.slices",
        "joint": "evomerge.search.space.joint",
    },
    entry_points="evomerge.space_kinds",
)


def register_space(cls: type[S]) -> type[S]:
    """Class decorator: make ``cls`` loadable as ``kind: <its kind>``."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        raise ValueError(f"{cls.__name__}: its `kind` field needs a default (the kind's name)")
    SPACE_KINDS.register(kind, cls)
    return cls


def read_space_file(path: Path) -> dict:
    raw = read_yaml_file(path, what="search space", examples="search_spaces/ holds working examples",
                         error=SearchSpaceError)
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{path}: a search space is a mapping of fields.")
    return raw


def load_space(path: str | Path, *, resolve: bool = True) -> Space:
    """Read and validate the space in ``path``, of the class its ``kind`` names (default: parameter).

    ``resolve``: read what the file leaves to the models (``num_layers`` from
    their config.json) and the recipes it references; ``False`` validates the
    file alone (no model needs to exist).
    """
    path = Path(path)
    raw = read_space_file(path)
    kind = raw.get("kind", "parameter")
    if not isinstance(kind, str) or kind not in SPACE_KINDS:
        raise SearchSpaceError(f"{path}: kind: {SPACE_KINDS.unknown_message(str(kind))}")
    return SPACE_KINDS.get(kind).from_raw(raw, path, resolve=resolve)


# Tags that pydantic puts in an error's location for union members (not fields).
UNION_TAGS: set[str] = set()


def read_depth(ref: str, dirs: Sequence[Path]) -> int:
    """The number of layers of the model directory ``ref`` (ValueError naming the fix otherwise)."""
    from evomerge.io.model_config import layer_count
    from evomerge.io.sources import resolve_model_path

    try:
        config_path = resolve_model_path(ref, list(dirs)) / "config.json"
        config = json.loads(config_path.read_text())
    except (EvomergeError, OSError, ValueError) as e:
        raise ValueError(f"could not read the depth of {ref!r} ({e}); set num_layers in the space") from None
    found = layer_count(config) if isinstance(config, dict) else None
    if found is None:
        raise ValueError(f"{config_path} gives no layer count; set num_layers in the space")
    return found[1]


def short_name(ref: str) -> str:
    """The last part of a model reference, for gene names."""
    return Path(ref.rstrip("/")).name or ref


def unique_labels(names: Sequence[str]) -> list[str]:
    """``names`` with repeats told apart by a ``#i`` suffix."""
    out = []
    for i, n in enumerate(names):
        out.append(n if names.count(n) == 1 else f"{n}#{i}")
    return out

