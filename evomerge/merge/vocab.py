"""Re-indexing vocabulary tensors (embeddings, output heads) onto the output vocabulary.

Before a vocabulary tensor is merged, each model's tensor is rebuilt with one row per output
token (``evomerge.io.tokenizer.Vocabulary``), as mergekit 0.1.5's ``PermutedVocabulary`` does:

* a model that has the token gives its own row;
* a model that lacks it gets the token's default row, chosen from the models of this tensor:
  the one model that has it (its row), none (zeros), the base if it is one of them and has
  it, else the mean of the rows of the models that have it (summed in the recipe's model
  order, then divided: mergekit's arithmetic, so the result is bit-identical);
* a token in ``tokenizer.tokens`` takes its default from its ``source`` (a model's row for it,
  a given model's row by token or id, or zeros), for every model if ``force``;
* rows past the vocabulary (``pad_to_multiple_of``) are the mean of the model's token rows.

The method then merges the re-indexed tensors like any others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from evomerge.errors import RecipeError
from evomerge.io.tokenizer import Vocabulary
from evomerge.recipe import ModelTokenEmbedding, TokenEmbedding, ZeroEmbedding


def align_vocabulary(
    vocab: Vocabulary,
    models: Sequence[str],
    tensors: Mapping[str, torch.Tensor],
    base: str | None,
    name: str,
) -> dict[str, torch.Tensor]:
    """``tensors`` (model -> vocabulary-first tensor) re-indexed onto ``vocab``; ``models``:
    this tensor's models in the recipe's order; ``base``: the slice's base model."""
    first = tensors[models[0]]
    dtype = first.dtype
    for m in models:
        dtype = torch.promote_types(dtype, tensors[m].dtype)
    device, rest = first.device, tuple(first.shape[1:])
    n = len(vocab.tokens)
    index = {m: torch.tensor(vocab.rows[m], dtype=torch.long, device=device) for m in models}
    present = {m: index[m] >= 0 for m in models}
    count = torch.stack([present[m] for m in models]).sum(0)

    forced = torch.zeros(n, dtype=torch.bool, device=device)
    overridden = torch.zeros(n, dtype=torch.bool, device=device)
    for token, setting in vocab.overrides.items():
        overridden[vocab.tokens[token]] = True
        forced[vocab.tokens[token]] = setting.force

    # Default rows: for tokens some model lacks (and every forced token).
    needs = ((count < len(models)) | forced).nonzero().flatten()
    auto = needs[~overridden[needs]]
    defaults = torch.zeros((len(needs), *rest), dtype=dtype, device=device)
    slot = {int(i): k for k, i in enumerate(needs.tolist())}
    if len(auto):
        at = torch.tensor([slot[int(i)] for i in auto.tolist()], dtype=torch.long, device=device)
        total = torch.zeros((len(auto), *rest), dtype=dtype, device=device)
        for m in models:
            has = present[m][auto]
            rows = tensors[m].to(dtype)[index[m][auto].clamp(min=0)]
            total = total + torch.where(_column(has, rest), rows, torch.zeros((), dtype=dtype, device=device))
        mean = total / count[auto].clamp(min=1).to(dtype).reshape(-1, *([1] * len(rest)))
        if base is not None and base in models:
            from_base = present[base][auto] & (count[auto] > 1)
            base_rows = tensors[base].to(dtype)[index[base][auto].clamp(min=0)]
            mean = torch.where(_column(from_base, rest), base_rows, mean)
        defaults[at] = mean
    for token, setting in vocab.overrides.items():
        i = vocab.tokens[token]
        if int(i) in slot:
            row = _override_row(vocab, setting, token, i, tensors, name)
            defaults[slot[int(i)]] = row.to(dtype) if row is not None else 0

    out = {}
    for m in models:
        new = torch.zeros((vocab.size, *rest), dtype=dtype, device=device)
        own = present[m] & ~forced
        new[:n][own] = tensors[m].to(dtype)[index[m][own]]
        fill = ~own[needs]
        new[needs[fill]] = defaults[fill]
        if vocab.size > n:  # padding rows: the mean of the token rows
            new[n:] = new[:n].mean(dim=0)
        out[m] = new
    return out


def _column(mask: torch.Tensor, rest: tuple[int, ...]) -> torch.Tensor:
    return mask.reshape(-1, *([1] * len(rest)))


def _override_row(
    vocab: Vocabulary,
    setting: TokenEmbedding,
    token: str,
    i: int,
    tensors: Mapping[str, torch.Tensor],
    name: str,
) -> torch.Tensor | None:
    """The default row ``tokenizer.tokens[token]`` asks for; None for zeros."""
    source = setting.source
    where = f"tokenizer.tokens[{token!r}] (tensor {name})"
    if isinstance(source, ZeroEmbedding):
        return None
    if source is None:
        raise RecipeError(
            f"{where}: a model lacks this token and no `source` is given for it; give "
            "`source:` (a model, {kind: model_token, ...} or {kind: zero})."
        )
    model = source.model if isinstance(source, ModelTokenEmbedding) else source
    if model not in tensors:
        raise RecipeError(
            f"{where} takes its row from {model!r}, which is not among this tensor's models "
            f"({', '.join(tensors)}); name one of them."
        )
    if isinstance(source, ModelTokenEmbedding):
        row = source.token_id
        if row is None:
            row = vocab.original[model].get(source.token or "")
            if row is None:
                raise RecipeError(
                    f"{where}: token {source.token!r} is not in {model}'s vocabulary; name one it has."
                )
        if not 0 <= row < tensors[model].shape[0]:
            raise RecipeError(
                f"{where}: token_id {row} is outside {model}'s {tensors[model].shape[0]} rows."
            )
        return tensors[model][row]
    row = vocab.rows[model][i]
    if row < 0:
        raise RecipeError(
            f"{where} takes its row from {model!r}, whose vocabulary lacks {token!r}; name a model "
            "that has it, or use {kind: model_token, model: ..., token: ...}."
        )
    return tensors[model][row]
