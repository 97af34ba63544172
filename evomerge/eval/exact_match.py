"""Exact-match generation on local JSONL: greedy, batched, with stop strings.

Each line holds ``{"prompt": ..., "answer": ...}``; the score is the fraction
of prompts whose greedy continuation, cut at a stop string, equals the answer.
"""

from __future__ import annotations

from functools import cached_property

from pydantic import Field

from evomerge.eval.base import (
    Evaluator,
    Objective,
    TaskConfig,
    per_example_details,
    register_evaluator,
)
from evomerge.eval.data import read_jsonl, split_path
from evomerge.eval.generate import greedy_generate


class ExactMatchConfig(TaskConfig):
    data: str = Field(description="JSONL path with a {split} placeholder, relative to the YAML.")
    max_new_tokens: int = Field(default=16, ge=1)
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    strip: bool = True
    metric: str = "exact_match"


@register_evaluator("exact_match")
class ExactMatch(Evaluator):
    Config = ExactMatchConfig
    per_example = True
    config: ExactMatchConfig

    @cached_property
    def rows(self) -> list[dict]:
        path = split_path(self.root, self.config.data, self.split)
        return read_jsonl(path, {"prompt": str, "answer": str})

    def objectives(self) -> list[Objective]:
        return [Objective(self.config.metric, "maximize")]

    def size(self) -> int:
        return len(self.rows)

    def _score(self, model, tokenizer, fidelity):
        idx = self.examples(fidelity)
        rows = [self.rows[i] for i in idx]
        preds = greedy_generate(
            model,
            tokenizer,
            [r["prompt"] for r in rows],
            max_new_tokens=self.config.max_new_tokens,
            stop=self.config.stop,
            batch_size=self.config.batch_size,
        )
        norm = str.strip if self.config.strip else (lambda s: s)
        hits = [float(norm(p) == norm(r["answer"])) for p, r in zip(preds, rows, strict=True)]
        details = per_example_details(idx, {self.config.metric: hits})
        return {self.config.metric: sum(hits) / len(rows)}, len(rows), details
