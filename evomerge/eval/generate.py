"""Batched greedy decoding with stop strings, on any causal LM in memory.

A plain loop over the model's forward with its KV cache: no sampling, no beam
machinery, so each step is one forward of the batch. Prompts are left-padded
and positions are counted from each row's first real token, which makes a
batched answer equal the answer the prompt gets alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from evomerge.eval.base import check_finite, model_device


def _truncate(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.inference_mode()
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch_size: int = 64,
) -> list[str]:
    """The greedy continuation of each prompt, cut at the first stop string or EOS."""
    device = model_device(model)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    # Longest first: similar lengths share a batch and the padding stays small.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = [encoded[i] for i in idx]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        texts = _decode_batch(model, tokenizer, ids, mask, max_new_tokens, stop, eos)
        for i, t in zip(idx, texts, strict=True):
            out[i] = t
    return out


def _cache_name(model) -> str:
    """The forward's KV-cache argument and output field: ``cache`` from transformers 5 on
    (``past_key_values`` still works there but warns on every run), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _last_logits_only(model) -> dict:
    """The forward's argument computing logits at the last position only (the prompt's forward
    would otherwise project every position onto the vocabulary: at a 128k vocabulary that is
    most of the prompt's cost); none where the model has no such argument."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _decode_batch(model, tokenizer, ids, mask, max_new_tokens, stop, eos) -> list[str]:
    n = ids.shape[0]
    cache_name = _cache_name(model)
    last_only = _last_logits_only(model)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    generated: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    texts = [""] * n
    past = None
    step_ids, step_pos = ids, pos
    for _ in range(max_new_tokens):
        res = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            **{cache_name: past},
            **last_only,
        )
        logits = res.logits[:, -1, :].float()  # argmax and isfinite on bf16 are slow on the CPU
        check_finite(logits)
        nxt = logits.argmax(-1)
        past = getattr(res, cache_name)
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if eos is not None and tok == eos:
                done[r] = True
                continue
            generated[r].append(tok)
            texts[r], hit = _truncate(tokenizer.decode(generated[r], skip_special_tokens=True), stop)
            done[r] = hit
        if all(done):
            break
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
    return texts
