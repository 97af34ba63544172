"""Checks on model directories before any compute: can they be read, loaded safely, merged together?

Plain functions that raise a ``CheckpointError`` whose one paragraph names the
directory, file, config key or tensor and the fix. ``evomerge merge``, ``eval``
and ``export`` call them, and so can a search's dry run: the sources of a run
are refused once, up front, rather than failing every trial.

* ``check_finite_tensor`` / ``check_finite_weights``: NaN or inf in a source;
* ``check_remote_code``: a config that needs the model's own code (``auto_map``);
* ``check_tokenizer``: a model directory without a tokenizer;
* ``check_same_architecture``, ``check_same_depth``, ``check_same_vocabulary``
  (or all of them: ``check_sources_fit``): sources that cannot be merged;
* ``check_writable``: an output location that cannot be written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evomerge.errors import CheckpointError, EvomergeError
from evomerge.io.model_config import layer_count

# Files a Hugging Face tokenizer is loaded from (any one of them makes a tokenizer).
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# config.json keys whose differences explain why two models do not fit together.
SHAPE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


class NonFiniteSourceError(CheckpointError):
    """A source model holds NaN or inf in a tensor a merge reads."""


# -- values --------------------------------------------------------------------------------------


def non_finite_counts(tensor: Any) -> tuple[int, int] | None:
    """``(nan, inf)`` counts of a floating-point tensor that holds any, else ``None``.

    One ``aminmax`` reduction on the happy path (NaN propagates through min and max and
    inf shows as one of them); the counting masks are made only for a bad tensor.
    """
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    lo, hi = torch.aminmax(tensor)
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):
        return None
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def describe_non_finite(nan: int, inf: int, numel: int) -> str:
    """``"non-finite values (1 NaN of 1536)"``: the wording every NaN/inf message shares."""
    parts = ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)
    return f"non-finite values ({parts} of {numel})"


def check_finite_tensor(model: str | Path, name: str, tensor: Any) -> None:
    """Refuse a source tensor that holds NaN or inf, naming the model directory and the tensor."""
    counts = non_finite_counts(tensor)
    if counts is not None:
        raise NonFiniteSourceError(
            f"Model {model} holds {describe_non_finite(*counts, tensor.numel())} in tensor {name}, "
            "which the merge reads; a merge of it would be silently broken. Use an intact copy of "
            "the checkpoint (re-download or re-export it), or leave this model out of the recipe."
        )


def check_finite_weights(source: Any, names: Iterable[str] | None = None) -> None:
    """Read every tensor of ``source`` (a ``TensorSource``; or just ``names``) and refuse NaN/inf."""
    model = getattr(source, "path", None) or source.name
    for name in source.tensor_names() if names is None else names:
        check_finite_tensor(model, name, source.get(name))


# -- loading -------------------------------------------------------------------------------------


def needs_remote_code(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` asks for the model's own Python code (``auto_map``)."""
    return bool(config.get("auto_map")) or bool((config.get("text_config") or {}).get("auto_map"))


def check_remote_code(path: str | Path, trust_remote_code: bool = False, *,
                      flag: str = "--trust-remote-code") -> None:
    """Refuse a model whose config needs its own code unless ``--trust-remote-code`` was given."""
    path = Path(path)
    config = _read_json(path / "config.json")
    if config is None or trust_remote_code or not needs_remote_code(config):
        return
    classes = ", ".join(sorted(str(v) for v in config.get("auto_map", {}).values()))
    raise CheckpointError(
        f"Model {path} needs its own Python code to load (config.json `auto_map`: "
        f"{classes or 'text_config.auto_map'}); evomerge does not run a model's code by default. "
        f"Read the code in that directory first; if you trust it, allow it with {flag}."
    )


def check_tokenizer(path: str | Path) -> None:
    """Refuse a model directory without a tokenizer (scoring a model needs one)."""
    path = Path(path)
    if any((path / name).is_file() for name in TOKENIZER_MARKERS):
        return
    raise CheckpointError(
        f"Model {path} has no tokenizer (none of {', '.join(TOKENIZER_MARKERS)}). Copy the "
        "tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) from "
        "the model it was fine-tuned from into it, or merge with `tokenizer_source:` naming a "
        "model that has one."
    )


def has_chat_template(path: str | Path) -> bool:
    """Whether a model directory's tokenizer carries a chat template (its own file, or a
    ``chat_template`` in ``tokenizer_config.json``)."""
    path = Path(path)
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template")) if config.is_file() else False
    except (OSError, ValueError):
        return False


# -- sources that must fit together --------------------------------------------------------------


def architecture_of(config: Mapping[str, Any]) -> str:
    """``LlamaForCausalLM`` (``architectures``), else the ``model_type``, else ``?``."""
    archs = config.get("architectures") or [config.get("model_type", "?")]
    return "/".join(str(a) for a in archs)


def check_same_architecture(configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse sources (name -> ``config.json``) of more than one architecture or model type."""
    kinds = {m: (architecture_of(c), c.get("model_type")) for m, c in configs.items()}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{m}: {a}" + (f" ({t})" if t else "") for m, (a, t) in kinds.items())
        raise CheckpointError(
            f"The source models have different architectures ({listed}; from each config.json). "
            "evomerge merges models of one architecture; choose sources fine-tuned from the same base."
        )


def check_same_depth(configs: Mapping[str, Mapping[str, Any]], where: str = "the recipe") -> None:
    """Refuse sources of different depths where ``where`` merges whole models layer by layer."""
    depths = {m: layer_count(c) for m, c in configs.items()}
    known = {m: d for m, d in depths.items() if d is not None}
    if len({n for _, n in known.values()}) > 1:
        listed = ", ".join(f"{m}: {n} ({key})" for m, (key, n) in known.items())
        raise CheckpointError(
            f"{where} merges whole models layer by layer, but the models have different numbers "
            f"of layers ({listed}; from each config.json). Merge models of equal depth, or write "
            "the merge with `slices:` whose layer_range spans the same number of layers in each model."
        )


def config_differences(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"hidden_size differs (a=32, b=48)"`` for each of ``SHAPE_KEYS`` the configs disagree on."""
    diffs = []
    for key in SHAPE_KEYS:
        values = {m: c.get(key) for m, c in configs.items()}
        # A key some configs leave out (head_dim, derived) is not a difference.
        if None not in values.values() and len({json.dumps(v) for v in values.values()}) > 1:
            diffs.append(f"{key} differs (" + ", ".join(f"{m}={v}" for m, v in values.items()) + ")")
    return diffs


def check_same_shapes(configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse sources whose configs give different layer shapes (hidden size, heads, ...)."""
    diffs = [d for d in config_differences(configs) if not d.startswith("vocab_size")]
    if diffs:
        raise CheckpointError(
            f"The source models have different shapes: {'; '.join(diffs)} (from each config.json). "
            "Their tensors cannot be merged; choose sources fine-tuned from the same base model."
        )


def tokenizer_vocabulary(path: str | Path) -> dict[str, int] | None:
    """The token -> id map of a model's ``tokenizer.json`` (with added tokens), if it has one."""
    data = _read_json(Path(path) / "tokenizer.json")
    if not isinstance(data, dict):
        return None
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        vocab = {entry[0]: i for i, entry in enumerate(vocab)}
    if not isinstance(vocab, dict):
        return None
    vocab = dict(vocab)
    for tok in data.get("added_tokens") or []:
        vocab[tok.get("content")] = tok.get("id")
    return vocab


def check_same_vocabulary(
    configs: Mapping[str, Mapping[str, Any]], paths: Mapping[str, str | Path] | None = None
) -> None:
    """Refuse sources with different vocabularies: ``vocab_size`` in config.json, or (given their
    directories) the token ids of their ``tokenizer.json``. Row i of an embedding means token i
    only in its own vocabulary; merging rows of two vocabularies mixes different tokens."""
    sizes = {m: c.get("vocab_size") for m, c in configs.items()}
    if None not in sizes.values() and len({json.dumps(v) for v in sizes.values()}) > 1:
        listed = ", ".join(f"{m}: {v}" for m, v in sizes.items())
        raise CheckpointError(
            f"The source models have different vocabularies (vocab_size in config.json: {listed}). "
            "Their embeddings and output heads cannot be merged row by row; choose sources that "
            "share the base model's tokenizer, or merge them onto one vocabulary with "
            "`tokenizer_source: union` (or `base`)."
        )
    if not paths:
        return
    vocabs = {m: v for m, p in paths.items() if (v := tokenizer_vocabulary(p)) is not None}
    if len(vocabs) < 2:
        return
    (first, ref), *rest = vocabs.items()
    for m, v in rest:
        if v != ref:
            differ = sorted(t for t in set(ref) | set(v) if ref.get(t) != v.get(t))
            shown = ", ".join(repr(t) for t in differ[:3])
            raise CheckpointError(
                f"The source models {first} and {m} have different tokenizers: their "
                f"tokenizer.json give {len(differ)} token(s) different ids (e.g. {shown}), so row i "
                "of their embeddings is a different token. Merge models that share one tokenizer "
                "(fine-tuned from the same base), merge them onto one vocabulary with "
                "`tokenizer_source: union` (or `base`), or fix the tokenizer files that were replaced."
            )


def check_sources_fit(
    configs: Mapping[str, Mapping[str, Any]],
    paths: Mapping[str, str | Path] | None = None,
    *,
    same_depth: bool = True,
    shapes: bool = True,
    where: str = "the recipe",
    vocabulary: bool = True,
) -> None:
    """Every check that sources of one merge must pass, most telling first. ``shapes=False``
    leaves layer shapes to the caller (a merge plan names the tensors that differ);
    ``vocabulary=False``: the embeddings are re-indexed onto an output vocabulary."""
    check_same_architecture(configs)
    if vocabulary:
        check_same_vocabulary(configs, paths)
    if shapes:
        check_same_shapes(configs)
    if same_depth:
        check_same_depth(configs, where)


# -- output --------------------------------------------------------------------------------------


def check_writable(out: str | Path, option: str = "--out") -> None:
    """Refuse an output location that cannot be created or written, before any compute.

    Probes by creating (and removing) a file in the nearest existing folder of ``out``:
    permissions, read-only file systems and a file in the way all show, for root too.
    """
    out = Path(out).absolute()
    parent = out if out.is_dir() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    problem = None
    if not parent.is_dir():
        problem = f"{parent} is a file, not a folder"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".evomerge-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            problem = f"{parent} is not writable ({err.strerror})"
    if problem:
        raise EvomergeError(
            f"Cannot write the output {out}: {problem}. Choose a writable location with {option}, "
            "or fix the folder's permissions."
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
