"""Sources that cannot be merged are refused before a search starts, not by every trial.

A search over a checkpoint of another architecture, shape or vocabulary, or one
holding NaN, would start, fail each trial the same way and end with nothing.
``check_sources`` opens each source of a space once (its ``config.json`` and
safetensors headers: no weights are loaded), compares what the merges will
combine, and reads every tensor once for NaN and inf; its one paragraph names
the space file, the model and the tensor. ``evomerge search`` calls it before
the run directory is written, ``search --dry-run`` as part of its checks, and
``resume`` again when the sources' fingerprints changed
(``evomerge.search.fingerprints``).

Which sources must agree on what: every source must have the base's layer
shapes and vocabulary (a layer of one model runs on another's hidden states);
the models a parameter-space merge combines whole must also have the same
depth and the same tensors, while a layer path may take layers from models of
different depths.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from evomerge.errors import CheckpointError
from evomerge.io.checkpoint import TensorSource
from evomerge.io.compat import (
    check_finite_tensor,
    check_remote_code,
    check_sources_fit,
    check_tokenizer,
)
from evomerge.io.sources import model_dir, open_source


def check_base(path: Path, *, trust_remote_code: bool = False) -> None:
    """The base becomes every worker's resident model: it must load without code the user did
    not allow, and have the tokenizer every task scores with."""
    check_remote_code(path, trust_remote_code, flag="the run config's `trust_remote_code: true`")
    check_tokenizer(path)


def whole_model_sources(space) -> list[str]:
    """The references of the models ``space`` merges whole (tensor by tensor), which must have
    the same tensors and depth: a parameter space's, or a joint space's parameter part's."""
    from evomerge.search.space import ParameterSpace

    if isinstance(space, ParameterSpace):
        return space.source_models()
    part = getattr(space, "parameter", None)
    return part.source_models() if isinstance(part, ParameterSpace) else []


def check_sources(space, sources: Mapping[str, Path], *, where: str | Path = "the search space",
                  scan_weights: bool = True) -> None:
    """Refuse ``sources`` (reference -> model directory, the first the base) that ``space``'s
    recipes cannot merge: unreadable or truncated checkpoints, other architectures, shapes,
    vocabularies or depths, missing tensors, and (``scan_weights``) NaN or inf in any tensor.
    ``where`` (the space file) starts the message."""
    opened: dict[str, TensorSource] = {}
    try:
        try:
            for ref in sources:
                opened[ref] = open_source(ref, sources)
            whole = [r for r in whole_model_sources(space) if r in opened]
            check_sources_fit({r: c.config for r, c in opened.items()},
                              {r: model_dir(r, sources) for r in opened}, same_depth=False)
            if whole:
                check_sources_fit({r: opened[r].config for r in whole}, same_depth=True,
                                  where=f"the merge of {', '.join(whole)}")
            _check_tensors(opened, whole)
            if scan_weights:
                for ref, c in opened.items():
                    for name in c.tensor_names():
                        check_finite_tensor(sources[ref], name, c.get(name))
        except CheckpointError as e:
            raise type(e)(f"{where}: the search cannot start, its sources cannot be merged: {e}") from None
    finally:
        for c in opened.values():
            c.close()


def _check_tensors(opened: Mapping[str, TensorSource], whole: list[str]) -> None:
    """The same shape for every tensor two sources share; the same tensors among ``whole``."""
    (base_ref, base), *_ = opened.items()
    for ref, c in opened.items():
        if c is base:
            continue
        names = set(c.tensor_names())
        for name in base.tensor_names():
            if name in names and base.shape(name) != c.shape(name):
                raise CheckpointError(
                    f"tensor {name} is {list(c.shape(name))} in model {ref} but "
                    f"{list(base.shape(name))} in {base_ref}, so the two cannot be merged; choose "
                    f"sources fine-tuned from the same base model."
                )
    if len(whole) < 2:
        return
    first = opened[whole[0]]
    for ref in whole[1:]:
        c = opened[ref]
        # A tied model has no lm_head tensor; the planner reads its embedding in its place.
        missing = sorted(n for n in set(first.tensor_names()) ^ set(c.tensor_names())
                         if not n.endswith("lm_head.weight"))
        if missing:
            holder, lacker = (whole[0], ref) if missing[0] in first else (ref, whole[0])
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"model {lacker} has no tensor {missing[0]}, which {holder} has{more}; a merge of "
                f"whole models needs the same tensors in each: choose sources of one architecture "
                f"(fine-tuned from the same base), or search their layers with a layer space."
            )
