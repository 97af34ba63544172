"""Perplexity on a local text file, in fixed windows of tokens.

The text is tokenized once and cut into non-overlapping windows; a fidelity
level scores a nested subset of the windows. Lower is better.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from pydantic import Field

from evomerge.eval.base import (
    Evaluator,
    Objective,
    TaskConfig,
    check_finite,
    model_device,
    register_evaluator,
)
from evomerge.eval.data import TaskDataError, nested_subset, split_path


class PerplexityConfig(TaskConfig):
    data: str = Field(description="Text path with a {split} placeholder, relative to the YAML.")
    window: int = Field(default=64, ge=2, description="Tokens per window (incl. BOS if any).")
    batch_size: int = Field(default=16, ge=1)


@register_evaluator("perplexity")
class Perplexity(Evaluator):
    Config = PerplexityConfig
    config: PerplexityConfig
    _windows: list[list[int]] | None = None
    _tokenizer_id: int | None = None

    @cached_property
    def text(self) -> str:
        path = split_path(self.root, self.config.data, self.split)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TaskDataError(
                f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-save the file as UTF-8."
            ) from None
        if not text.strip():
            raise TaskDataError(f"{path}: empty text; fill it, or fix `data:` in the task config.")
        return text

    def windows(self, tokenizer) -> list[list[int]]:
        if self._windows is None or self._tokenizer_id != id(tokenizer):
            # Line by line: a whole file in one call trips max-length warnings for nothing.
            lines = self.text.splitlines(keepends=True)
            ids = [t for row in tokenizer(lines, add_special_tokens=False)["input_ids"] for t in row]
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            w = self.config.window - len(bos)
            self._windows = [bos + ids[i : i + w] for i in range(0, len(ids) - 1, w)]
            self._windows = [x for x in self._windows if len(x) > len(bos) + 1]
            self._tokenizer_id = id(tokenizer)
        return self._windows

    def size(self) -> int:
        # Known once tokenized; before that, estimate from characters (used for costs only).
        if self._windows is not None:
            return len(self._windows)
        return max(1, len(self.text) // self.config.window)

    def objectives(self) -> list[Objective]:
        return [Objective("perplexity", "minimize")]

    @torch.inference_mode()
    def _score(self, model, tokenizer, fidelity):
        windows = self.windows(tokenizer)
        picked = [windows[i] for i in nested_subset(len(windows), fidelity, self.config.subset_seed)]
        device = model_device(model)
        nll, count = 0.0, 0
        bs = self.config.batch_size
        for start in range(0, len(picked), bs):
            chunk = picked[start : start + bs]
            width = max(map(len, chunk))
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for r, w in enumerate(chunk):
                ids[r, : len(w)] = torch.tensor(w)
                labels[r, : len(w)] = torch.tensor(w)
            logits = model(input_ids=ids.to(device)).logits.float()
            check_finite(logits)
            shift = labels[:, 1:].to(logits.device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                shift.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            nll += loss.item()
            count += int((shift != -100).sum())
        return {"perplexity": math.exp(nll / count), "nll": nll / count}, len(picked)
