"""Merging in memory, candidate after candidate, into a resident model.

``InMemoryMerger`` is what a search worker calls thousands of times: it opens the source
weights once (memory-mapped on the CPU; on a GPU, on the device or the host as
``evomerge.merge.placement`` decides) and writes each candidate into the same output
tensors, touching no disk. A merged tensor that holds NaN or inf fails the candidate,
naming it (``NonFiniteMergeError``). ``evomerge.merge.engine`` streams a merge to disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import CheckpointError
from evomerge.io.checkpoint import StateDictSource, TensorSource, tensor_bytes
from evomerge.io.sources import is_adapter_entry, model_dir, open_source, split_adapter
from evomerge.io.tokenizer import Vocabulary, build_vocabulary
from evomerge.merge._util import Destination, use_destination
from evomerge.merge.engine import NonFiniteMergeError, check_device, finite_flag
from evomerge.merge.low_rank import LowRankSource
from evomerge.merge.placement import SourcesOn, source_device
from evomerge.merge.plan import MergePlan, build_plan
from evomerge.recipe import Recipe


class InMemoryMerger:
    """Merge candidates in memory, many times, over resident source weights.

    ``sources`` maps each model reference to a directory or to an in-memory
    ``TensorSource``. Every source tensor is opened once (in ``dtype`` if given:
    else memory-mapped, as stored); ``merge`` then merges on ``device`` and writes a
    recipe's result into ``into`` (a state dict or an ``nn.Module``), reusing its
    tensors when shapes match. ``sources_on`` (a GPU ``device`` only): hold the
    sources on the device, on the host (each tensor's inputs copied to the device
    as it is merged), or ``auto``: on the device if they fit beside the candidate
    and the evaluation (``evomerge.merge.placement``); ``source_device`` says which.
    """

    def __init__(
        self,
        sources: Mapping[str, str | Path | TensorSource],
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        allow_pickle: bool = False,
        sources_on: SourcesOn = "auto",
    ) -> None:
        self.device = check_device(device)
        self.dtype = dtype
        self.sources: dict[str, StateDictSource | LowRankSource] = {}
        self._paths: dict[str, Path] = {}  # model directories: their tokenizers
        self._vocabularies: dict[str, Vocabulary | None] = {}
        dirs = {r: Path(s) for r, s in sources.items() if isinstance(s, (str, Path))}
        adapters = []  # kept as their factors once their base is resident
        opened = {}
        for ref, src in sources.items():
            if isinstance(src, (str, Path)):
                src = open_source(ref, dirs, allow_pickle=allow_pickle)
                self._paths[ref] = model_dir(ref, dirs)
                if is_adapter_entry(ref, dirs):  # (its model is an entry of dirs too)
                    adapters.append((ref, src))
                    continue
            opened[ref] = src
        sizes = [tensor_bytes(src, dtype) for src in opened.values()]
        # On a GPU: the sources on the device, or memory-mapped on the host and copied per tensor.
        self.source_device = source_device(self.device, sources_on, sum(sizes), max(sizes, default=0))
        for ref, src in opened.items():
            tensors = {
                name: src.get(name).to(device=self.source_device, dtype=dtype or src.dtype(name))
                for name in src.tensor_names()
            }
            self.sources[ref] = StateDictSource(ref, tensors, dict(src.config))
        for ref, src in adapters:
            base = self.sources[split_adapter(ref)[0]]
            self.sources[ref] = LowRankSource(ref, src, base, device=self.source_device, dtype=dtype)
            src.close()
        self._source_storages = {
            _storage(t) for s in self.sources.values() for t in s.resident_tensors()
        }

    def plan(self, recipe: Recipe, seed: int | None = None) -> MergePlan:
        return build_plan(recipe, self.sources, seed=seed, vocabulary=self._vocabulary(recipe))

    def _vocabulary(self, recipe: Recipe) -> Vocabulary | None:
        """The recipe's output vocabulary, built once per tokenizer setting (a search's
        candidates share it); None without one, or without the sources' directories."""
        models = recipe.referenced_models()
        if recipe.vocabulary_source is None or not all(m in self._paths for m in models):
            return None
        key = json.dumps([models, recipe.base_model, recipe.tokenizer_source,
                          recipe.tokenizer.model_dump(mode="json") if recipe.tokenizer else None])
        if key not in self._vocabularies:
            self._vocabularies[key] = build_vocabulary(
                recipe, self._paths, {m: self.sources[m].config for m in models}
            )
        return self._vocabularies[key]

    def output_config(self, recipe: Recipe) -> dict[str, Any]:
        return self.plan(recipe).output_config(self.sources)

    @torch.inference_mode()
    def merge(
        self,
        recipe: Recipe,
        into: MutableMapping[str, torch.Tensor] | torch.nn.Module | None = None,
        *,
        seed: int | None = None,
        plan: MergePlan | None = None,
    ) -> MutableMapping[str, torch.Tensor]:
        """``plan``: this recipe's plan if the caller already built it (``self.plan(recipe, seed)``)."""
        plan = plan or self.plan(recipe, seed)
        target: MutableMapping[str, torch.Tensor]
        if isinstance(into, torch.nn.Module):
            target = into.state_dict(keep_vars=False)
        elif into is None:
            target = {}
        else:
            target = into
        finite: list[tuple[str, torch.Tensor]] = []
        dest = Destination()
        with use_destination(dest):
            for op in plan.ops:
                existing = target.get(op.name)
                if existing is not None and _storage(existing) in self._source_storages:
                    # A source tensor stored by reference (a copied tensor, from into=None):
                    # never merge into it; a state dict gets a tensor of its own instead.
                    if not isinstance(into, torch.nn.Module):
                        existing = target.pop(op.name) and None
                    dest.tensor = None
                else:
                    dest.tensor = existing  # a method may build its result right there
                try:
                    merged = plan.run_op(op, lambda m, t: self.sources[m].tensors[t], self.device,
                                         into_dtype=None if existing is None else existing.dtype)
                finally:
                    dest.tensor = None
                self._store(op.name, merged, existing, target, into)
                flag = finite_flag(target[op.name])
                if flag is not None:
                    finite.append((op.name, flag))
        # One device sync per candidate, not one per tensor; the tensor is named only on failure.
        if finite and not bool(torch.stack([f for _, f in finite]).all()):
            name = next(n for n, f in finite if not bool(f))
            raise NonFiniteMergeError.at(name, target.get(name))
        return target

    def _store(
        self,
        name: str,
        merged: torch.Tensor,
        existing: torch.Tensor | None,
        target: MutableMapping[str, torch.Tensor],
        into: MutableMapping[str, torch.Tensor] | torch.nn.Module | None,
    ) -> None:
        if existing is not None and existing.shape == merged.shape:
            if _is_same(merged, existing):
                return  # merged in place
            if _storage(merged) == _storage(existing):
                merged = merged.clone()  # a view of it: copying would overlap
            existing.copy_(merged)  # a narrower dtype there can overflow: checked as stored
        elif isinstance(into, torch.nn.Module):
            found = "no such tensor" if existing is None else f"shape {list(existing.shape)}"
            raise CheckpointError(
                f"Tensor {name}: the resident model has {found} but the recipe makes shape "
                f"{list(merged.shape)}; build a model from merger.output_config(recipe) for this recipe."
            )
        else:
            if _storage(merged) in self._source_storages:  # e.g. a copied tensor: the source itself
                merged = merged.clone()  # so that a later candidate merging into it cannot alter it
            target[name] = merged


def _storage(t: torch.Tensor) -> tuple[str, int]:
    return (t.device.type, t.untyped_storage().data_ptr())


def _is_same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )
