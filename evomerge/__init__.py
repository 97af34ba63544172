"""evomerge: evolutionary / AutoML search for model-merge recipes.

Importing the package is cheap: heavy dependencies (transformers, Ray, MLflow,
lm-eval) are imported only by the modules that need them.
"""

from evomerge.errors import EvomergeError
from evomerge.recipe import Recipe

__version__ = "0.1.0"

__all__ = ["EvomergeError", "Recipe", "__version__"]
