"""Multiple choice by log-likelihood on local JSONL.

Each line holds ``{"prompt": ..., "choices": [...], "answer": index}``. A
choice's score is the summed log-probability of its tokens after the prompt;
``acc`` takes the best sum, ``acc_norm`` the best sum per character (the usual
correction for choices of different lengths).
"""

from __future__ import annotations

from functools import cached_property

import torch
from pydantic import Field

from evomerge.eval.base import (
    EvaluationFailure,
    Evaluator,
    Objective,
    TaskConfig,
    check_finite,
    model_device,
    per_example_details,
    register_evaluator,
)
from evomerge.eval.data import TaskDataError, read_jsonl, split_path


class LoglikelihoodConfig(TaskConfig):
    data: str = Field(description="JSONL path with a {split} placeholder, relative to the YAML.")


@torch.inference_mode()
def continuation_logprobs(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int
) -> list[float]:
    """Sum of log p(continuation | context) for each (context, continuation)."""
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = []
    for ctx, cont in pairs:
        c = tokenizer(ctx)["input_ids"]
        k = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not k:
            raise EvaluationFailure(f"choice {cont!r} encodes to no tokens")
        seqs.append((c + k, len(c)))
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
        # Right padding: causal attention never lets a real token see the pads after it.
        logits = model(input_ids=ids.to(device)).logits.float()
        check_finite(logits)
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for r, i in enumerate(idx):
            seq, n_ctx = seqs[i]
            targets = torch.tensor(seq[n_ctx:])
            steps = logp[r, n_ctx - 1 : len(seq) - 1]
            out[i] = steps.gather(1, targets[:, None]).sum().item()
    return out


@register_evaluator("loglikelihood")
class Loglikelihood(Evaluator):
    Config = LoglikelihoodConfig
    per_example = True
    config: LoglikelihoodConfig

    @cached_property
    def rows(self) -> list[dict]:
        path = split_path(self.root, self.config.data, self.split)
        rows = read_jsonl(path, {"prompt": str, "choices": list, "answer": int})
        for n, r in enumerate(rows, 1):
            if not (0 <= r["answer"] < len(r["choices"])):
                raise TaskDataError(f"{path}: example {n}: answer {r['answer']} is not a choice index.")
        return rows

    def objectives(self) -> list[Objective]:
        return [Objective("acc", "maximize"), Objective("acc_norm", "maximize")]

    def size(self) -> int:
        return len(self.rows)

    def _score(self, model, tokenizer, fidelity):
        idx = self.examples(fidelity)
        rows = [self.rows[i] for i in idx]
        pairs = [(r["prompt"], c) for r in rows for c in r["choices"]]
        scores = continuation_logprobs(model, tokenizer, pairs, self.config.batch_size)
        acc: list[float] = []
        acc_norm: list[float] = []
        k = 0
        for r in rows:
            s = scores[k : k + len(r["choices"])]
            k += len(r["choices"])
            norm = [v / max(1, len(c)) for v, c in zip(s, r["choices"], strict=True)]
            acc.append(float(max(range(len(s)), key=s.__getitem__) == r["answer"]))
            acc_norm.append(float(max(range(len(s)), key=norm.__getitem__) == r["answer"]))
        details = per_example_details(idx, {"acc": acc, "acc_norm": acc_norm})
        return {"acc": sum(acc) / len(rows), "acc_norm": sum(acc_norm) / len(rows)}, len(rows), details
