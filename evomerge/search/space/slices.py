"""Contiguous-slices ("frankenmerge") layer spaces: a path of ``k`` runs of consecutive layers.

Slice ``j`` has a model gene (which source; absent with one source), a length
gene (an integer in ``length``), a position gene (where the run starts, as a
fraction of the room left: ``start = floor(u * (L - length + 1))``, so every
run fits; a run longer than its source is cut to the source's depth) and, with ``scale``, a scale gene. The path is slice 0, then slice
1, ... With ``optional: true`` each slice also has an inclusion gene (on the
path above 0.5); with none included, the one with the largest value is kept.
With ``max_layers``, a slice that would overflow the budget is shortened and
the rest dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.search.space.base import Gene, Range, register_space
from evomerge.search.space.layer import INCLUDED, PathSpace
from evomerge.search.space.sources import Run


class Lengths(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Lengths:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be above high ({self.high})")
        return self


@register_space
class SlicesSpace(PathSpace):
    """``slices`` runs of consecutive layers, each from a chosen model."""

    kind: Literal["slices"] = "slices"
    slices: int = Field(ge=1, description="How many runs the path has.")
    length: Lengths | None = Field(default=None, description="Layers per run; default 1..num_layers.")
    scale: Range | None = None
    optional: bool = False

    @model_validator(mode="after")
    def _check(self) -> SlicesSpace:
        if self.num_layers is not None and self.length is not None and self.length.high > self.max_depth():
            raise ValueError(
                f"length: high ({self.length.high}) is above the sources' {self.max_depth()} layers"
            )
        return self

    def lengths(self) -> tuple[int, int]:
        return (self.length.low, self.length.high) if self.length else (1, self.max_depth())

    def genes(self) -> list[Gene]:
        low, high = self.lengths()
        out: list[Gene] = []
        for j in range(self.slices):
            if self.optional:
                out.append(Gene(f"s{j}.in"))
            if len(self.models) > 1:
                out.append(Gene(f"s{j}.model", choices=tuple(self.labels())))
            if low < high:
                out.append(Gene(f"s{j}.length", low, high, integer=True))
            out.append(Gene(f"s{j}.position"))
            if self.scale is not None:
                out.append(Gene(f"s{j}.scale", self.scale.low, self.scale.high))
        return out

    def runs(self, u: list[float]) -> list[Run]:
        genes = self.genes()
        values = {g.name: g.value(v) for g, v in zip(genes, u, strict=True)}
        raw = dict(zip((g.name for g in genes), u, strict=True))
        labels = self.labels()
        low, _ = self.lengths()
        chosen = list(range(self.slices))
        if self.optional:
            chosen = [j for j in chosen if raw[f"s{j}.in"] > INCLUDED] or [
                max(range(self.slices), key=lambda j: (raw[f"s{j}.in"], -j))
            ]
        runs: list[Run] = []
        room = self.max_layers
        for j in chosen:
            m = labels.index(values[f"s{j}.model"]) if len(self.models) > 1 else 0
            depth = self.depth_of(m)
            n = min(values.get(f"s{j}.length", low), depth)
            if room is not None:
                n = min(n, room)
                room -= n
            if n <= 0:
                break
            start = min(int(raw[f"s{j}.position"] * (depth - n + 1)), depth - n)
            runs.append(Run(m, start, start + n, values.get(f"s{j}.scale")))
        return runs

