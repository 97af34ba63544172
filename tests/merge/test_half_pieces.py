"""bf16 / fp16 task-arithmetic merges on the CPU run the float32 loops through float32 pieces
(evomerge.merge._pieces), with no whole-tensor copy, in either arithmetic: under
``computing_in_float32`` (a recipe computing in float32 from half sources) the result is the
float32 merge of the (exactly) upcast inputs rounded once, bit for bit, on the compiled and the
numpy paths; otherwise (a recipe computing in the half dtype) the deterministic methods follow
torch's arithmetic in that dtype step by step, as mergekit's (and evomerge's torch loop) do."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge import _kernels, task_arithmetic
from evomerge.merge._pieces import Float32Pieces, OutputPieces, computing_in_float32, flat_f32
from evomerge.merge.registry import Scope, TensorGroup, get_method

METHODS = {
    "task_arithmetic": {"weight": [0.6, 0.3, 0.2]},
    "ties": {"weight": [0.6, 0.3, 0.2], "density": [0.5, 0.3, 0.7]},
    "dare_ties": {"weight": [0.6, 0.3, 0.2], "density": [0.5, 0.3, 0.7]},
    "dare_linear": {"weight": [0.6, 0.3, 0.2], "density": [0.5, 0.5, 0.5]},
    "breadcrumbs_ties": {"weight": [0.6, 0.3, 0.2], "density": [0.8, 0.8, 0.8]},
}


def _inputs(dtype, n=300_001, zeros=0.6):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=gen).to(dtype)
    models = []
    for _ in range(3):
        d = 0.01 * torch.randn(n, generator=gen)
        d[torch.rand(n, generator=gen) < zeros] = 0  # mostly exact zeros, as bf16 fine-tunes
        models.append((base.float() + d).to(dtype))
    return base, models


def _merge(name, base, models, seed=11, **options):
    spec = get_method(name)
    params = {p.name: [p.default] * len(models) if p.scope is Scope.PER_MODEL else p.default
              for p in spec.params if not p.required}
    params.update(METHODS[name])
    params.update(options)
    params.pop("int8_mask", None)
    group = TensorGroup("model.layers.0.mlp.up_proj.weight", list(models), base,
                        seed=seed if spec.randomized else None)
    return spec.fn(group, **params)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_half_merges_are_the_float32_merge_rounded_once(name, dtype, compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(_kernels, "active", lambda: False)
    else:
        assert _kernels.active(), "numba (a core dependency) did not load: the compiled path is untested"
    base, models = _inputs(dtype)
    with computing_in_float32():
        got = _merge(name, base, models)
    want = _merge(name, base.float(), [m.float() for m in models]).to(dtype)
    assert got.dtype == dtype
    assert torch.equal(got, want), f"{int((got != want).sum())} entries differ"


HALF_ARITHMETIC = {  # deterministic members, and the options that add a rounded step
    "task_arithmetic": {}, "ties": {}, "breadcrumbs_ties": {},
    "ties-lambda": {"lambda": 0.7}, "task_arithmetic-normalize": {"normalize": True},
}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", sorted(HALF_ARITHMETIC))
def test_half_merges_follow_torchs_arithmetic_in_that_dtype(case, dtype, compiled, monkeypatch):
    # (the compiled loop takes bf16 without lambda or a normalised sum without consensus)
    name = case.split("-")[0]
    calls = []
    real = _kernels.combine
    monkeypatch.setattr(_kernels, "combine", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_kernels, "ENABLED", compiled)
    base, models = _inputs(dtype)
    got = _merge(name, base, models, **HALF_ARITHMETIC[case])
    got_compiled = bool(calls)
    with computing_in_float32():
        once = _merge(name, base, models, **HALF_ARITHMETIC[case])
    # The torch loop (the path other devices take) in the half dtype: mergekit's order of ops.
    monkeypatch.setattr(task_arithmetic, "use_half_pieces", lambda *t: False)
    want = _merge(name, base, models, **HALF_ARITHMETIC[case])
    assert got.dtype == dtype
    assert torch.equal(got, want), f"{int((got != want).sum())} entries differ"
    assert not torch.equal(got, once)  # the two arithmetics differ on these inputs
    assert got_compiled == (compiled and dtype == torch.bfloat16 and case in ("ties", "breadcrumbs_ties", "task_arithmetic"))


def test_pieces_convert_slices_and_gathers_exactly():
    t = torch.randn(1000).to(torch.bfloat16)
    view = flat_f32(t, "t")
    assert isinstance(view, Float32Pieces) and view.size == 1000
    assert torch.equal(torch.from_numpy(view[100:300].copy()), t[100:300].float())
    idx = torch.tensor([5, 999, 0]).numpy()
    assert torch.equal(torch.from_numpy(view[idx]), t[[5, 999, 0]].float())
    out = torch.empty(1000, dtype=torch.float16)
    pieces = OutputPieces(out)
    piece = pieces.piece(0, 1000)
    piece[:] = view[0:1000]
    pieces.put(piece, 0, 1000)
    assert torch.equal(out, t.float().half())
