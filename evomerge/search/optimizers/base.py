"""The ask/tell protocol every optimiser follows.

Optimisers see only the unit cube ``[0, 1]^d`` (the search space decodes
points into recipes) and *maximise* every value they are told; the controller
turns objectives into that form (flipping the sign of minimised ones) and, for
single-objective optimisers, applies the run's declared scalarisation first.
``ask`` may return ``None`` when the optimiser cannot propose before hearing
back (CMA-ES waits for the rest of its generation); ``tell(..., None)`` reports
a failed trial.

A run with ``constraints:`` calls ``expect_constraints(n)`` once before the first
``ask`` and then tells each scored trial's constraint values with its values:
``tell(id, values, constraints=(c_1, ..., c_n))``, Optuna's convention (a value
<= 0 means the constraint is met; larger is a larger violation, relative to the
bound). What an optimiser does with them is its own (Optuna's samplers model
them; CMA-ES penalises; random search ignores them) and is documented in its
module. An optimiser whose ``tell`` takes no ``constraints`` cannot run a
constrained search (the run is refused before any model loads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from evomerge.registry import Registry


def auto_options(table: dict[str, dict], n_objectives: int, **given) -> dict:
    """``given`` with each "auto" replaced by ``table``'s value for one objective ("one") or
    several ("several"): options whose right amount of effort depends on the objective count."""
    effort = table["one" if n_objectives == 1 else "several"]
    return {k: effort[k] if v == "auto" else v for k, v in given.items()}


@dataclass(frozen=True)
class Suggestion:
    id: int
    x: np.ndarray


class Optimizer(ABC):
    #: how many values ``tell`` takes: 1 for single-objective optimisers, None for any number
    max_objectives: int | None = 1

    def __init__(self, dimension: int, n_objectives: int = 1, seed: int = 0) -> None:
        if dimension < 1:
            raise ValueError("a search space needs at least one gene")
        if self.max_objectives is not None and n_objectives > self.max_objectives:
            raise ValueError(
                f"{type(self).__name__} optimises one value; declare a scalarisation of the "
                f"{n_objectives} objectives or choose a multi-objective optimiser (nsga2, random)"
            )
        self.dimension = dimension
        self.n_objectives = n_objectives
        self.seed = seed
        self.n_constraints = 0
        self._next_id = 0

    def expect_constraints(self, n: int) -> None:
        """The run tells ``n`` constraint values with each scored trial (before the first ask)."""
        self.n_constraints = n

    def warm_start(self, points: list[np.ndarray]) -> None:
        """Propose these points first (for example the plain average and each expert)."""
        raise NotImplementedError(f"{type(self).__name__} does not take warm starts")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    @abstractmethod
    def ask(self) -> Suggestion | None: ...

    @abstractmethod
    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None: ...


# A new optimiser: one module whose class is decorated with @register_optimizer("name"), and
# one entry here (or a package entry point in the evomerge.optimizers group).
OPTIMIZERS: Registry[type[Optimizer]] = Registry(
    "optimizer",
    {
        "random": "evomerge.search.optimizers.random_search",
        "cmaes": "evomerge.search.optimizers.cmaes",
        "tpe": "evomerge.search.optimizers.optuna_samplers",
        "gp": "evomerge.search.optimizers.optuna_samplers",
        "lq_cmaes": "evomerge.search.optimizers.lq_cmaes",
        "nsga2": "evomerge.search.optimizers.optuna_samplers",
        "quadratic": "evomerge.search.optimizers.quadratic",
        "botorch_gp": "evomerge.search.optimizers.botorch_gp",  # the botorch extra
        "quadratic_refine": "evomerge.search.optimizers.quadratic_refine",
    },
    entry_points="evomerge.optimizers",
)


def register_optimizer(name: str):
    return OPTIMIZERS.decorator(name)
