"""evomerge: evolutionary / AutoML search for model-merge recipes.

Importing the package is cheap: heavy dependencies (transformers, Ray, MLflow,
lm-eval, even pydantic via ``Recipe``) are imported only when first used.
"""

from __future__ import annotations

from typing import Any

from evomerge.errors import EvomergeError

__version__ = "0.1.0"

__all__ = ["EvomergeError", "Recipe", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Recipe":  # lazily: the CLI starts work before pydantic is loaded
        from evomerge.recipe import Recipe

        return Recipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
