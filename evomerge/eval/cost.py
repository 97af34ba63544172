"""Cost objectives read off the model itself: parameters, layers, bytes, and measured latency.

They are free to compute (latency: a few forward passes) and lower is better; a
multi-objective search trades them against quality (e.g. a deeper layer-space
merge against its accuracy), and a run's ``constraints:`` bound them.

``bytes`` is the size of the merged weights at the dtype they would be written
in (the recipe's ``out_dtype``, else its ``dtype``, else the sources'): a search
worker holds its resident model in float32 whatever the output dtype is, so it
tells the model's output size through ``set_output_bytes``; without it, the
bytes are those of the model's tensors as held.

``latency_ms_per_token`` is measured, so it is noisy: the median of
``LATENCY_REPEATS`` timed forward passes over a fixed input of
``LATENCY_TOKENS`` tokens (after a warm-up pass), divided by the tokens; the
fastest and slowest pass are reported beside it (``latency_ms_per_token_min``,
``_max``) so the spread is stated. Workers that share cores (a pool on a busy
machine) widen it; bound latency with a margin, or measure on a quiet device.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from evomerge.eval.base import Evaluator, Objective, TaskConfig, model_device, register_evaluator

CostMetric = Literal["params", "layers", "bytes", "latency_ms_per_token"]
LATENCY_TOKENS = 16
LATENCY_REPEATS = 7
_OUTPUT_BYTES = "_evomerge_output_bytes"


class CostConfig(TaskConfig):
    metrics: list[CostMetric] = Field(default_factory=lambda: ["params", "layers", "bytes"], min_length=1)


def set_output_bytes(model, nbytes: int | None) -> None:
    """Record the size the model's weights would have when written (what ``bytes`` reports)."""
    setattr(model, _OUTPUT_BYTES, nbytes)


def model_costs(model) -> dict[str, float]:
    seen: set[int] = set()
    params = nbytes = 0
    for p in model.parameters():  # tied weights are one tensor: count them once
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    written = getattr(model, _OUTPUT_BYTES, None)
    blocks = getattr(getattr(model, "model", model), "layers", None)
    if blocks is not None:
        layers = len(blocks)  # the modules present, whatever the config says
    else:
        layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    return {"params": float(params), "layers": float(layers),
            "bytes": float(written if written is not None else nbytes)}


def measure_latency(model, tokens: int = LATENCY_TOKENS, repeats: int = LATENCY_REPEATS) -> dict[str, float]:
    """Milliseconds per token of a forward pass over a fixed input: median, min and max of
    ``repeats`` timed passes after one warm-up (which pays for lazy initialisation and caches)."""
    import torch

    device = model_device(model)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    # A fixed, spread-out sequence of ids: the same input for every candidate of a run.
    ids = (torch.arange(tokens) * 7919 % vocab).unsqueeze(0).to(device)
    cuda = device.type == "cuda"
    per_token: list[float] = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            if cuda:
                torch.cuda.synchronize(device)
            if i:  # the first pass is the warm-up
                per_token.append(1000.0 * (time.perf_counter() - t0) / tokens)
    per_token.sort()
    return {"latency_ms_per_token": per_token[len(per_token) // 2],
            "latency_ms_per_token_min": per_token[0], "latency_ms_per_token_max": per_token[-1]}


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
        out = {m: costs[m] for m in self.config.metrics if m in costs}
        if "latency_ms_per_token" in self.config.metrics:
            out.update(measure_latency(model))
        return out, 0
