"""Cost objectives read off the model itself: parameters, layers, bytes.

They are free to compute and lower is better; a multi-objective search trades
them against quality (e.g. a deeper layer-space merge against its accuracy).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from evomerge.eval.base import Evaluator, Objective, TaskConfig, register_evaluator

CostMetric = Literal["params", "layers", "bytes"]


class CostConfig(TaskConfig):
    metrics: list[CostMetric] = Field(default_factory=lambda: ["params", "layers", "bytes"], min_length=1)


def model_costs(model) -> dict[str, float]:
    seen: set[int] = set()
    params = nbytes = 0
    for p in model.parameters():  # tied weights are one tensor: count them once
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    blocks = getattr(getattr(model, "model", model), "layers", None)
    if blocks is not None:
        layers = len(blocks)  # the modules present, whatever the config says
    else:
        layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    return {"params": float(params), "layers": float(layers), "bytes": float(nbytes)}


@register_evaluator("cost")
class Cost(Evaluator):
    Config = CostConfig
    config: CostConfig

    def objectives(self) -> list[Objective]:
        return [Objective(m, "minimize") for m in self.config.metrics]

    def cost(self, fidelity=None) -> float:
        return 0.0

    def _score(self, model, tokenizer, fidelity):
        costs = model_costs(model)
        return {m: costs[m] for m in self.config.metrics}, 0
