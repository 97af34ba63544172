"""Run the reference implementation (mergekit) in-process on a config, for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.testing import run_mergekit  # noqa: F401  (re-exported for the parity tests)


def load_dir(out: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def at_thresholds(recipe, dtype: torch.dtype, sparsification: str) -> dict[str, torch.Tensor]:
    """Per output tensor of a magnitude-selecting recipe (TIES, breadcrumbs), the entries where
    some model's delta (rounded to ``dtype``, as both tools compute it) has a magnitude equal to
    one of its selection thresholds: where mergekit's sort order picks among tied entries and
    evomerge keeps them all, so the results may differ there."""
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.merge.task_arithmetic import _band_ranks

    merger = InMemoryMerger({m: m for m in recipe.referenced_models()}, dtype=dtype)
    tied = {}
    for op in merger.plan(recipe).ops:
        if op.base is None or "density" not in op.per_model:
            continue
        base = merger.sources[op.base[0]].tensors[op.base[1]]
        mark = torch.zeros(base.numel(), dtype=torch.bool)
        for i, (model, name) in enumerate(op.inputs):
            mags = (merger.sources[model].tensors[name] - base).abs().reshape(-1).float()
            gamma = op.per_model["gamma"][i] if "gamma" in op.per_model else 0.0
            ordered = mags.sort().values
            for r in _band_ranks(mags.numel(), sparsification, op.per_model["density"][i], gamma) or []:
                mark |= mags == ordered[r - 1]
        tied[op.name] = mark.reshape(base.shape)
    return tied


def differing(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per tensor, where evomerge's result differs from mergekit's. mergekit writes some half
    merges in float32 (ramplus_tl's and arcee_fusion's float32 factors promote the result);
    evomerge writes the recipe's dtype: compared in that, mergekit's rounded once."""
    assert sorted(got) == sorted(expected)
    return {k: got[k] != v.to(got[k].dtype) for k, v in expected.items()}
