"""Executors turn (recipe, fidelity) into scores.

The in-process executor keeps the source weights and one resident model in
memory and merges every candidate into that model before scoring it: no disk,
no reloading. A Ray executor will run the same object inside long-lived
workers. Failures (a recipe that cannot be merged, a task that fails) come
back as an outcome with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import EvomergeError


@dataclass
class Outcome:
    values: dict[str, float] | None
    error: str | None
    seconds: float


class InProcessExecutor:
    def __init__(self, sources: dict[str, Path], base: str, tasks, *, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evomerge.merge.engine import InMemoryMerger

        self.tasks = tasks
        self.merger = InMemoryMerger(sources, device=device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(sources[base]))
        self.model = (
            AutoModelForCausalLM.from_pretrained(str(sources[base]), dtype=torch.float32, use_safetensors=True)
            .to(device)
            .eval()
        )

    def evaluate(self, recipe, fidelity: int | None) -> Outcome:
        t0 = time.perf_counter()
        try:
            self.merger.merge(recipe, into=self.model)
        except EvomergeError as e:
            return Outcome(None, f"merge failed: {e}", time.perf_counter() - t0)
        values: dict[str, float] = {}
        for task in self.tasks:
            res = task.evaluate(self.model, self.tokenizer, fidelity)
            if not res.ok:
                return Outcome(None, f"task {task.name} failed: {res.error}", time.perf_counter() - t0)
            values.update({f"{task.name}/{k}": v for k, v in res.values.items()})
        return Outcome(values, None, time.perf_counter() - t0)
