"""Applying a recipe streamed to disk, and the checks every merge shares.

``merge_to_disk`` reads one tensor per input at a time (memory-mapped), merges
it and streams the result into the output shards, so memory is bounded by a
few tensors whatever the model size. ``evomerge.merge.in_memory`` merges
candidate after candidate into a resident model instead. Either way a merged
tensor that holds NaN or inf is refused, naming it (``NonFiniteMergeError``): on
disk before its bytes are written, in memory as the candidate's failure.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from evomerge.errors import RecipeError
from evomerge.io.checkpoint import TensorSource
from evomerge.io.prefill import OutputPrefill
from evomerge.io.sources import (
    hub_pins,
    model_dir,
    open_source,
    resolve_sources,
)
from evomerge.io.tokenizer import (
    Vocabulary,
    build_vocabulary,
    load_tokenizer,
    resolve_chat_template,
    save_tokenizer,
)
from evomerge.io.writer import DEFAULT_SHARD_BYTES, CheckpointWriter, TensorSpec, check_output_dir
from evomerge.merge import _kernels, sparsify
from evomerge.merge._util import (
    OutputPool,
    take_finite_mark,
    use_output_pool,
)
from evomerge.merge.plan import MergePlan, build_plan
from evomerge.recipe import Recipe

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)

Progress = Callable[[int, int, str], None]


def with_overrides(recipe: Recipe, dtype: str | None = None, seed: int | None = None) -> Recipe:
    data = recipe.to_dict()
    if dtype is not None:
        data["dtype"] = dtype
    if seed is not None:
        data["seed"] = seed
    return Recipe.from_dict(data, "recipe with command-line overrides")


class NonFiniteMergeError(RecipeError):
    """A merged tensor holds NaN or inf: a model written from it would be silently broken."""

    @classmethod
    def at(cls, name: str, tensor: torch.Tensor | None) -> NonFiniteMergeError:
        what = "non-finite values"
        if tensor is not None:
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            what = ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)
            what = f"non-finite values ({what} of {tensor.numel()})"
        return cls(
            f"merge produced {what} in tensor {name}. A source holds NaN/inf there, or the recipe's "
            f"weights push values past what the dtype can hold: check the sources' weights, lower "
            f"the weights (or scale), or merge in a wider dtype."
        )


def finite_flag(t: torch.Tensor) -> torch.Tensor | None:
    """A 0-d bool on ``t``'s device: whether every value is finite (None: nothing to check).

    One reduction and no mask the size of the tensor (``isfinite(t)`` would allocate
    one): NaN propagates through min and max, and inf shows as one of them.
    """
    if take_finite_mark(t) or not t.is_floating_point() or t.numel() == 0:
        return None  # (marked: a fused merge loop checked every value as it wrote it)
    if sparsify.use_numpy(t) and t.is_contiguous():
        # numpy's min/max on our worker threads: torch's OpenMP reductions stalled for seconds
        # when another process shared the cores (spinning workers waiting on a descheduled one).
        flat = sparsify.flat_np(t)
        step = max(sparsify.CHUNK, -(-flat.size // sparsify.workers()))
        ends = [(i, min(i + step, flat.size)) for i in range(0, flat.size, step)]
        ok = all(sparsify.parallel_map(_finite_range, [flat] * len(ends), ends))
        return torch.tensor(ok)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


def _finite_range(flat, bounds: tuple[int, int]) -> bool:
    part = flat[bounds[0] : bounds[1]]
    return bool(np.isfinite(part.min()) and np.isfinite(part.max()))  # NaN propagates through both


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise ``NonFiniteMergeError`` naming ``name`` if ``t`` holds NaN or inf."""
    flag = finite_flag(t)
    if flag is not None and not bool(flag):
        raise NonFiniteMergeError.at(name, t)


def check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"Device {device!r} was requested but CUDA is not available here; use --device cpu."
        )
    return dev


@dataclass
class MergeResult:
    out: Path
    tensors: int
    input_bytes: int
    output_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def merge_to_disk(
    recipe: Recipe,
    out: str | Path,
    *,
    device: str = "cpu",
    force: bool = False,
    allow_pickle: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    search_dirs: Sequence[Path] = (),
    progress: Progress | None = None,
    prefill: OutputPrefill | None = None,
) -> MergeResult:
    """Merge ``recipe`` into a new model directory ``out``, atomically.

    ``prefill``: an output file being warmed by ``evomerge.io.prefill`` (the CLI's), adopted
    by the writer when the output is one shard.
    """
    start = time.perf_counter()
    out = Path(out)
    dev = check_device(device)
    check_output_dir(out, force)  # before any compute
    # A NaN in a source is refused naming the model and tensor, as it is read.
    refs = recipe.referenced_models()
    dirs = resolve_sources(refs, search_dirs, allow_pickle=allow_pickle)
    sources = {
        ref: open_source(ref, dirs, allow_pickle=allow_pickle, check_finite=True) for ref in refs
    }
    # The written recipe names Hub ids at the commit merged (``org/name@<commit>``).
    written = recipe.with_models_renamed(hub_pins(refs, dirs), "the merged recipe")
    paths = {ref: model_dir(ref, dirs) for ref in refs}  # configs and tokenizers
    vocabulary = build_vocabulary(recipe, paths, {m: c.config for m, c in sources.items()})
    template = None
    if recipe.chat_template:
        template = resolve_chat_template(recipe.chat_template, list(paths.values()))
    plan = build_plan(recipe, sources, vocabulary=vocabulary)
    specs = plan.specs()
    input_bytes = _input_bytes(plan, sources)
    with _kernels.use_fused(input_bytes >= _kernels.ONE_OFF_MIN_BYTES), CheckpointWriter(
        out, specs, max_shard_bytes=max_shard_bytes, force=force, prefill=prefill
    ) as writer:
        pool = OutputPool()  # written tensors' buffers hold later ones: no fresh pages
        with torch.inference_mode(), use_output_pool(pool):
            for i, op in enumerate(plan.ops):
                if progress:
                    progress(i, len(plan.ops), op.name)
                merged = plan.run_op(op, lambda m, t: sources[m].get(t), dev)
                check_finite(op.name, merged)  # before its bytes reach the output
                buf = pool.settle(merged)
                writer.write(
                    op.name, merged, done=None if buf is None else partial(pool.release, buf)
                )
                del merged, buf
        if progress:
            progress(len(plan.ops), len(plan.ops), "")
        writer.write_json("config.json", plan.output_config(sources))
        _write_tokenizer(recipe, paths, vocabulary, template, writer)
        writer.write_text("evomerge_recipe.yaml", written.to_yaml())
        _write_mergekit_config(written, writer)
    return MergeResult(
        out=out,
        tensors=len(specs),
        input_bytes=input_bytes,
        output_bytes=sum(s.nbytes for s in specs),
        seconds=time.perf_counter() - start,
        warnings=plan.warnings,
    )


def _input_bytes(plan: MergePlan, sources: Mapping[str, TensorSource]) -> int:
    return sum(
        TensorSpec(t, sources[m].shape(t), sources[m].dtype(t)).nbytes
        for op in plan.ops
        for m, t in op.all_inputs
    )


def _write_tokenizer(
    recipe: Recipe,
    paths: Mapping[str, Path],
    vocabulary: Vocabulary | None,
    template: str | None,
    writer: CheckpointWriter,
) -> None:
    """The output vocabulary's tokenizer; else the source's tokenizer files, copied (re-saved
    with the chat template ``template`` if the recipe gives one, as mergekit does)."""
    tokenizer = vocabulary.tokenizer if vocabulary is not None else None
    if tokenizer is None:
        src = recipe.vocabulary_source
        if src in (None, "base"):
            src = recipe.base_model or recipe.referenced_models()[0]
        if src not in paths:
            raise RecipeError(
                f"tokenizer_source {src!r} is not one of the recipe's models; use 'base' or one of them."
            )
        if template is not None:
            tokenizer = load_tokenizer(paths[src])
        if tokenizer is None:
            for name in TOKENIZER_FILES:
                path = paths[src] / name
                if path.exists():
                    writer.copy_file(path)
            if template is not None:  # no tokenizer loads from the files: set the key in place
                config_path = paths[src] / "tokenizer_config.json"
                config = json.loads(config_path.read_text()) if config_path.exists() else {}
                writer.write_json("tokenizer_config.json", {**config, "chat_template": template})
            return
    with tempfile.TemporaryDirectory() as tmp:
        for path in save_tokenizer(tokenizer, template, Path(tmp)):
            writer.copy_file(path)


def _write_mergekit_config(recipe: Recipe, writer: CheckpointWriter) -> None:
    from evomerge.mergekit_compat import MergekitExportError, to_mergekit_yaml

    with contextlib.suppress(
        MergekitExportError
    ):  # not expressible; evomerge_recipe.yaml is the record
        writer.write_text("mergekit_config.yml", to_mergekit_yaml(recipe))
