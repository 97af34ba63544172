"""The output vocabulary of a merge: mergekit's ``tokenizer_source`` and ``tokenizer:`` block.

Row ``i`` of an embedding (or of the output head) belongs to token ``i`` of its own model's
vocabulary only. When a recipe names a vocabulary source (``base``, ``union`` or a model),
the output vocabulary is that source's, and every source's vocabulary tensors are re-indexed
onto it before they are merged (``evomerge.merge.vocab``), as mergekit 0.1.5 does:

* ``base`` (or a model): that model's tokenizer (the base's without the ids past its
  ``vocab_size``: padding entries its embedding has no row for);
* ``union``: the base's tokenizer, with every other token of the other models appended: first
  their ordinary tokens, then their added tokens. mergekit appends them in Python set and
  hash-map order, which changes from run to run; evomerge appends them in the recipe's model
  order and, within a model, by id, so the same recipe gives the same ids every time;
* ``tokenizer.tokens``: tokens to add (if missing) and where their rows come from;
  ``pad_to_multiple_of`` rounds the number of rows up.

Tokenizers are read from the model directories only (``local_files_only``): nothing is
downloaded. ``chat_template`` (a template name, ``auto`` or a Jinja string) is resolved here
too; the output tokenizer is written with ``save_pretrained``, as mergekit writes it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import CheckpointError, RecipeError
from evomerge.recipe import Recipe, TokenEmbedding

# Named chat templates (mergekit's names). Written for evomerge: each renders a conversation as
# mergekit's template of that name does (the tests compare), except ``exaone``: mergekit's
# leaks its file's indentation into the prompt; this one renders the format without it.
CHAT_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set turns = messages[1:] %}{% else %}{% set turns = messages %}{% endif %}{{ bos_token }}"
        "{% for m in turns %}"
        "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
        "'After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if m['role'] == 'user' %}{{ ' [INST] ' }}{% if loop.first and system is defined %}"
        "{{ system + '\\n\\n' }}{% endif %}{{ m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported, with the exception of an "
        "initial optional system message!') }}{% endif %}{% endfor %}"
    ),
    "alpaca": (
        "{% set systems = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{{ (systems | last).content | trim if systems else '' }}{{ '\\n\\n' }}"
        "{% set heads = {'user': '### Instruction:', 'assistant': '### Response:', 'user_context': '### Input:'} %}"
        "{% for m in messages %}{% if m['role'] in heads %}{{ heads[m['role']] + '\\n' + m['content'] | trim }}"
        "{% if not loop.last %}{{ '\\n\\n' }}{% endif %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "exaone": (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}"
        "{% endif %}{{ '[|' + m['role'] + '|]' + m['content'] }}"
        "{{ '\\n' if m['role'] == 'user' else '[|endofturn|]\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
}


@dataclass
class Vocabulary:
    """The output vocabulary and, per source model, which of its rows each output token takes.

    ``rows[model][i]``: the model's row for output token ``i``, or -1 if the model lacks it.
    ``size``: rows of the output embedding (``len(tokens)`` rounded up to ``pad_to_multiple_of``).
    """

    tokens: dict[str, int]
    size: int
    rows: dict[str, list[int]]
    original: dict[str, dict[str, int]]  # model -> its own token -> id
    overrides: dict[str, TokenEmbedding]  # the recipe's ``tokenizer.tokens``
    tokenizer: Any = field(repr=False, default=None)  # the output tokenizer (transformers)
    warnings: list[str] = field(default_factory=list)

    def is_identity(self, model: str, rows: int) -> bool:
        """Whether re-indexing the model's ``rows``-row tensor onto this vocabulary changes nothing."""
        return (
            self.size == rows
            and not self.overrides
            and self.rows[model] == list(range(rows))
        )


def vocab_size_of(config: Mapping[str, Any]) -> int | None:
    value = config.get("vocab_size")
    if value is None:
        value = (config.get("text_config") or {}).get("vocab_size")
    return value


def load_tokenizer(path: Path) -> Any:
    """The fast tokenizer of a model directory, from its files only; None if it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def build_vocabulary(
    recipe: Recipe, paths: Mapping[str, Path], configs: Mapping[str, Mapping[str, Any]]
) -> Vocabulary | None:
    """The output vocabulary of ``recipe`` over its models' directories (``paths``).

    None when the recipe names no vocabulary source, or names ``base``/a model whose tokenizer
    files are missing: then rows merge one to one, as without a source (and the sources must
    share one vocabulary).
    """
    source = recipe.vocabulary_source
    if source is None:
        return None
    models = recipe.referenced_models()
    base = recipe.base_model or models[0]
    sizes = {m: vocab_size_of(configs[m]) for m in models}
    tokenizers = {m: load_tokenizer(paths[m]) for m in models}
    needs_tokenizers = source == "union" or recipe.tokenizer is not None
    warnings: list[str] = []
    if tokenizers[base] is None or (source not in ("base", "union") and tokenizers.get(source) is None):
        if not needs_tokenizers:
            return None
        missing = base if tokenizers[base] is None else source
        raise CheckpointError(
            f"The recipe's vocabulary source {source!r} needs the tokenizer of {missing} "
            f"({paths.get(missing, missing)}), but none loads from its files (tokenizer.json and "
            "tokenizer_config.json). Copy the tokenizer files into that directory; evomerge "
            "downloads nothing."
        )
    for m in models:
        if tokenizers[m] is None:  # mergekit's rule: a model without a tokenizer shares the base's
            warnings.append(f"{m} has no tokenizer files; its vocabulary is taken to be {base}'s.")
            tokenizers[m] = tokenizers[base]
    vocabs = {m: _usable_vocab(tokenizers[m], sizes[m]) for m in models}
    base_full = tokenizers[base].get_vocab()
    if source in ("base", "union") and len(vocabs[base]) != len(base_full):
        raise RecipeError(
            f"The tokenizer of {base} has {len(base_full) - len(vocabs[base])} token(s) with ids at "
            f"or past its vocab_size {sizes[base]} (config.json), which its embedding has no rows "
            "for. evomerge does not rewrite such a tokenizer; use a model whose tokenizer fits its "
            "embedding as the base, or name it in `tokenizer_source`."
        )
    if source == "union":
        out = _union_tokenizer(base, models, tokenizers, vocabs)
    elif source == "base":
        out = tokenizers[base]
    else:
        if source not in tokenizers:
            raise RecipeError(
                f"The vocabulary source {source!r} is not one of the recipe's models "
                f"({', '.join(models)}); use 'base', 'union' or one of them."
            )
        out = tokenizers[source]
    overrides = dict((recipe.tokenizer.tokens or {}) if recipe.tokenizer else {})
    existing = set(out.get_vocab())
    for token in overrides:
        if token not in existing:
            out.add_tokens(token)
            existing.add(token)
    tokens = out.get_vocab()
    size = len(tokens)
    pad = recipe.tokenizer.pad_to_multiple_of if recipe.tokenizer else None
    if pad and size % pad:
        size += pad - size % pad
    rows = {}
    for m in models:
        own = vocabs[m]
        row = [-1] * len(tokens)
        for token, i in tokens.items():
            row[i] = own.get(token, -1)
        rows[m] = row
    return Vocabulary(
        tokens=tokens,
        size=size,
        rows=rows,
        original={m: tokenizers[m].get_vocab() for m in models},
        overrides=overrides,
        tokenizer=out,
        warnings=warnings,
    )


def _usable_vocab(tokenizer: Any, size: int | None) -> dict[str, int]:
    """The token -> id map without ids at or past the model's ``vocab_size`` (no row for them)."""
    vocab = tokenizer.get_vocab()
    return {t: i for t, i in vocab.items() if size is None or i < size}


def _union_tokenizer(
    base: str, models: Sequence[str], tokenizers: Mapping[str, Any], vocabs: Mapping[str, dict[str, int]]
) -> Any:
    """The base's tokenizer (a fresh copy) with the other models' tokens appended: ordinary
    tokens first, then added tokens; in model order (base first), by id within a model."""
    from transformers import AutoTokenizer

    order = [base] + [m for m in models if m != base]
    added: dict[str, Any] = {}
    for m in order:
        for i, info in sorted(tokenizers[m].added_tokens_decoder.items()):
            if vocabs[m].get(info.content) == i:
                added.setdefault(info.content, info)
    plain: list[str] = []
    known: set[str] = set()
    for m in order:
        for token, _ in sorted(vocabs[m].items(), key=lambda kv: kv[1]):
            if token not in added and token not in known:
                known.add(token)
                plain.append(token)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's tokenizer stays as it was
        tokenizers[base].save_pretrained(tmp)
        out = AutoTokenizer.from_pretrained(tmp, local_files_only=True, use_fast=True)
    base_vocab = tokenizers[base].get_vocab()
    for token in plain:
        if token not in base_vocab:
            out.add_tokens(token)
    for info in added.values():
        out.add_tokens(info)
    return out


def resolve_chat_template(value: str, paths: Sequence[Path]) -> str | None:
    """mergekit's ``chat_template``: ``auto`` (the template most of the models' tokenizers carry,
    the first of them on a tie; None if none has one), a template name (``chatml``, ``llama3``,
    ``mistral``, ``alpaca``, ``exaone``) or a Jinja template."""
    if value == "auto":
        found = []
        for path in paths:
            tok = load_tokenizer(path)
            template = getattr(tok, "chat_template", None) if tok is not None else None
            if isinstance(template, dict):
                template = template.get("default")
            if template:
                found.append(template.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if len(value) < 20 or "{" not in value:
        raise RecipeError(
            f"chat_template {value!r} is neither a template name ({', '.join(CHAT_TEMPLATES)}, or "
            "'auto' for the models' own) nor a Jinja template; give one of those."
        )
    return value


def save_tokenizer(tokenizer: Any, chat_template: str | None, out: Path) -> list[Path]:
    """Write ``tokenizer`` (with ``chat_template`` if given) into ``out``; returns the files."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out))
    return sorted(p for p in out.iterdir() if p.is_file())
