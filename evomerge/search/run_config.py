"""A search run's configuration (``runs/*.yaml``), validated before any compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomerge.errors import EvomergeError, field_problems


class RunConfigError(EvomergeError):
    pass


class ObjectiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    metric: str | None = Field(default=None, description="Defaults to the task's first objective.")
    weight: float = Field(default=1.0, gt=0, description="Its share of the scalarised fitness.")


class OptimizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "cmaes"
    options: dict[str, Any] = Field(default_factory=dict)


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: int = Field(default=50, ge=1)
    seconds: float | None = Field(default=None, gt=0)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    space: str
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    scalarization: Literal["weighted_sum"] = "weighted_sum"
    optimizer: OptimizerSpec = OptimizerSpec()
    budget: Budget = Budget()
    fidelity: int | None = Field(default=None, ge=1)
    split: Literal["search", "test"] = "search"
    allow_test_split: bool = False
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            return cls.model_validate(raw)
        except (OSError, yaml.YAMLError) as e:
            raise RunConfigError(f"{path}: cannot read the run config ({e}).") from None
        except ValidationError as e:
            problems = field_problems(e)
            raise RunConfigError(f"{path}: invalid run config: {problems}.") from None
