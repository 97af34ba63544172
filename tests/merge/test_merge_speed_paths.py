"""The fast CPU paths give exactly what the plain paths give (issue 17: merge speed).

Deltas here are shaped like real fine-tunes' where the fast paths could go wrong:
heavy tails, scales differing by 10x between models, rows of exact zeros, and a
base holding -0.0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.merge import order_stats, sparsify
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.merge.registry import TensorGroup
from evomerge.merge.task_arithmetic import merge_task_vectors
from evomerge.recipe import Recipe


def _family(n_rows: int = 300, n_cols: int = 700, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n_rows, n_cols, generator=gen) * 0.05
    base[0, :5] = -0.0
    experts = []
    for scale in (0.001, 0.01):  # one expert's task vector 10x the other's
        d = torch.randn(base.shape, generator=gen) * torch.randn(base.shape, generator=gen).exp()
        d[: n_rows // 5] = 0  # rows the fine-tune never touched
        experts.append(base + d * scale)
    return base, experts


@pytest.mark.parametrize("ranks", [[1], [105_000], [210_000], [60_000, 200_000]])
def test_order_statistics_of_several_models_are_exact(ranks):
    base, experts = _family()  # 210,000 entries: above the size where a sample brackets
    got = order_stats.magnitude_order_stats_np(experts, base, [ranks] * len(experts))
    for x, values in zip(experts, got, strict=True):
        mags = np.sort(np.abs((x - base).numpy()).ravel())
        assert values == [float(mags[r - 1]) for r in ranks]


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "breadcrumbs_ties", "della"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lambda_", [1.0, 0.8])
def test_numpy_combine_equals_the_torch_loop_bit_for_bit(method, normalize, lambda_):
    base, experts = _family()
    sparsification, consensus = {
        "ties": ("magnitude", True),
        "dare_ties": ("random", True),
        "dare_linear": ("random", False),
        "breadcrumbs_ties": ("magnitude_outliers", True),
        "della": ("della_magprune", True),
    }[method]
    kwargs = dict(
        sparsification=sparsification, consensus=consensus, weight=[0.7, 0.45],
        density=[0.3, 0.6], normalize=normalize, rescale=method != "ties",
        gamma=[0.01, 0.02], epsilon=[0.1, 0.1], lambda_=lambda_,
    )
    fast = merge_task_vectors(TensorGroup("t", experts, base, seed=3), **kwargs)
    # The plain torch loop (what other devices and dtypes run) on the same float32 tensors.
    original = sparsify.use_numpy
    try:
        sparsify.use_numpy = lambda *t: False
        plain = merge_task_vectors(TensorGroup("t", experts, base, seed=3), **kwargs)
    finally:
        sparsify.use_numpy = original
    assert torch.equal(fast.view(torch.int32), plain.view(torch.int32))


def _recipe(paths, method="ties"):
    return Recipe.from_dict(
        {
            "merge_method": method,
            "base_model": "base",
            "models": [
                {"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in ("a", "b")
            ],
        }
    )


def _sources():
    from evomerge.io import StateDictSource
    from evomerge.testing import llama_config, llama_state

    config = llama_config(tied=False)
    base = llama_state(config, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    models = {"base": base}
    for name, scale in (("a", 0.01), ("b", 0.1)):
        models[name] = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    return {m: StateDictSource(m, sd, config) for m, sd in models.items()}


def test_in_memory_candidates_are_written_in_place():
    merger = InMemoryMerger(_sources())
    first = merger.merge(_recipe(None))
    ptrs = {k: v.data_ptr() for k, v in first.items()}
    again = merger.merge(_recipe(None), into=first)
    assert {k: v.data_ptr() for k, v in again.items()} == ptrs
    fresh = merger.merge(_recipe(None))
    assert all(torch.equal(again[k], fresh[k]) for k in fresh)


def test_a_source_tensor_stored_by_reference_is_never_merged_into():
    merger = InMemoryMerger(_sources())
    # passthrough of the base: the state dict holds copies, never the source tensors themselves
    copied = merger.merge(
        Recipe.from_dict({"merge_method": "passthrough", "models": [{"model": "base"}]})
    )
    base = merger.sources["base"].tensors
    assert all(copied[k].data_ptr() != base[k].data_ptr() for k in base)
    before = {k: v.clone() for k, v in base.items()}
    merger.merge(_recipe(None), into=copied)  # a later candidate into the same state dict
    assert all(torch.equal(base[k], before[k]) for k in base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_models", [1, 2, 3])
@pytest.mark.parametrize(
    "method",
    ["ties", "ties_unnormalized", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
     "task_arithmetic"],
)
def test_fused_kernels_equal_the_numpy_path_bit_for_bit(monkeypatch, method, n_models, dtype):
    from evomerge.merge import _kernels

    base, experts = _family()
    experts.append(base + 0.05 * torch.randn(base.shape, generator=torch.Generator().manual_seed(9)))
    experts = [e.to(dtype) for e in experts[:n_models]]
    base = base.to(dtype)
    experts[0][1, :3] = base[1, :3]  # exact-zero deltas in every model...
    experts[-1][1, :3] = base[1, :3]
    experts[0][2, 0] = -experts[0][2, 0]  # ...and deltas of opposite signs
    sparsification, consensus, normalize = {
        "ties": ("magnitude", True, True),
        "ties_unnormalized": ("magnitude", True, False),
        "dare_ties": ("random", True, False),
        "dare_linear": ("random", False, False),
        "breadcrumbs": ("magnitude_outliers", False, False),
        "breadcrumbs_ties": ("magnitude_outliers", True, False),
        "task_arithmetic": (None, False, False),
    }[method]
    kwargs = dict(
        sparsification=sparsification, consensus=consensus, normalize=normalize,
        weight=[0.7, -0.45, 1.3][:n_models], density=[0.3, 0.6, 0.9][:n_models],
        rescale=sparsification == "random", gamma=[0.01, 0.02, 0.0][:n_models],
    )
    outs = []
    for enabled in (True, False):
        monkeypatch.setattr(_kernels, "ENABLED", enabled)
        outs.append(merge_task_vectors(TensorGroup("t", experts, base, seed=3), **kwargs))
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(outs[0].view(bits), outs[1].view(bits))
    assert not torch.equal(outs[0], base)  # the merge did something


def test_fused_counting_finds_the_numpy_path_order_statistics(monkeypatch):
    from evomerge.merge import _kernels

    base, experts = _family(seed=4)
    ranks = [[2_000, 180_000], [1, 209_999]]
    got = []
    for enabled in (True, False):
        monkeypatch.setattr(_kernels, "ENABLED", enabled)
        got.append(order_stats.magnitude_order_stats_np(experts, base, ranks))
    assert got[0] == got[1]
    mags = np.sort(np.abs((experts[1] - base).numpy()).ravel())
    assert got[0][1] == [float(mags[0]), float(mags[209_998])]


@pytest.mark.parametrize("fused", [True, False])
def test_order_statistics_inside_and_at_the_edge_of_a_large_tie(monkeypatch, fused):
    # A bf16 fine-tune's delta: most entries exact zeros, the rest few distinct magnitudes. Ties
    # at a window's low edge are counted, not kept (issue 30): every rank must still be exact.
    from evomerge.merge import _kernels

    monkeypatch.setattr(_kernels, "ENABLED", fused)
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(300, 700, generator=gen) * 0.05
    experts = []
    for zero_share in (0.62, 0.51):
        d = (torch.randn(base.shape, generator=gen) * 0.01).to(torch.bfloat16).float()  # few values
        d[torch.rand(base.shape, generator=gen) < zero_share] = 0
        experts.append(base + d)
    n = base.numel()
    mags = [np.sort(np.abs((x - base).numpy()).ravel()) for x in experts]
    zeros = [int(np.count_nonzero(m == 0)) for m in mags]
    ranks = [[1, n // 2, zeros[0], zeros[0] + 1, n], [zeros[1] - 3, zeros[1] + 2, 3 * n // 4]]
    got = order_stats.magnitude_order_stats_np(experts, base, ranks)
    assert got == [[float(m[r - 1]) for r in rs] for m, rs in zip(mags, ranks, strict=True)]
    torch_path = [order_stats.magnitude_order_stats(x.double(), base.double(), rs) for x, rs in zip(experts, ranks, strict=True)]
    assert torch_path == [[float(v) for v in np.sort(np.abs((x.double() - base.double()).numpy()).ravel())[
        [r - 1 for r in rs]]] for x, rs in zip(experts, ranks, strict=True)]


def test_the_fused_combine_reports_non_finite_output():
    from evomerge.merge import _kernels

    one = np.ones(1, dtype=np.float32)
    d = np.empty((1, _kernels.BLOCK), np.float32)
    mixed, total, divisor = (np.empty(_kernels.BLOCK, np.float32) for _ in range(3))
    conv = np.empty((3, _kernels.BLOCK), np.float32)

    def combine(x, bf16=False):  # one model kept whole, TIES-normalized, onto a zero base
        if bf16:  # bfloat16 bits in and out, rounded in the loop
            x = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        b = np.zeros(4, dtype=x.dtype)
        out = np.empty(4, dtype=x.dtype)
        finite = _kernels.combine(b, (x,), bf16, False, np.zeros(1, np.int8), one * 0, one * np.inf,
                                  (np.zeros(0, np.bool_),), one, one, True, True, out,
                                  d, d.view(np.int32), mixed, mixed.view(np.int32), total,
                                  total.view(np.int32), divisor, divisor.view(np.int32),
                                  conv, conv.view(np.uint32))
        got = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).float().numpy() if bf16 else out
        return finite, got.tolist()

    for bf16 in (False, True):
        assert not combine(np.array([1, 2, np.inf, 4], dtype=np.float32), bf16)[0]
        assert not combine(np.array([1, np.nan, 3, 4], dtype=np.float32), bf16)[0]
        assert combine(np.array([1, -2, 3, 0], np.float32), bf16) == (True, [1, -2, 3, 0])
    big = float(torch.finfo(torch.bfloat16).max)  # the largest finite bf16 stays finite
    assert combine(np.array([big, -big, 0.5, 0.25], np.float32), True) == (True, [big, -big, 0.5, 0.25])


def test_kept_samples_give_the_same_order_statistics_and_never_a_wrong_one():
    base, experts = _family(seed=7)
    ranks = [[50_000], [150_000]]
    order_stats._kept_samples.clear()
    runs = [order_stats.magnitude_order_stats_np(experts, base, ranks) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]  # gathered, then sorted, then looked up
    assert all(entry[1] for entry in order_stats._kept_samples.values())
    # Another delta with the same fingerprint (equal at the probed entries): the kept windows
    # are wrong for it, and the answer must still be exact.
    ia = order_stats._sample_indices(base.numel()).numpy()
    probe = ia[:: max(1, ia.size // 64)]
    other = experts[0].clone()
    keep = np.zeros(base.numel(), dtype=bool)
    keep[probe] = True
    flat, flat_base = other.view(-1), base.view(-1)
    flat[~torch.from_numpy(keep)] = flat_base[~torch.from_numpy(keep)] + 50 * (
        flat[~torch.from_numpy(keep)] - flat_base[~torch.from_numpy(keep)])
    got = order_stats.magnitude_order_stats_np([other], base, [ranks[0]])[0]
    mags = np.sort(np.abs((other - base).numpy()).ravel())
    assert got == [float(mags[ranks[0][0] - 1])]


def test_a_search_merges_with_the_compiled_loops_and_a_small_one_off_merge_does_not(
    monkeypatch, tmp_path, untied_family
):
    """Loading numba costs a process about a second: worth it for the many candidates of a
    search, not for one merge of a small model (``_kernels.ONE_OFF_MIN_BYTES``)."""
    from evomerge.merge import _kernels, engine

    monkeypatch.setattr(_kernels, "ENABLED", True)  # numba is a dependency (whatever EVOMERGE_FUSED says)
    calls = []
    real = _kernels.combine
    monkeypatch.setattr(_kernels, "combine", lambda *a: calls.append(1) or real(*a))
    merger = InMemoryMerger(_sources())
    merger.merge(_recipe(None))
    assert calls, "the in-memory merge did not use the compiled loop"
    calls.clear()

    recipe = Recipe.from_dict({
        "merge_method": "ties", "base_model": str(untied_family["base"]),
        "models": [{"model": str(untied_family[m]), "parameters": {"weight": 0.5, "density": 0.5}}
                   for m in ("expert0", "expert1")],
    })
    engine.merge_to_disk(recipe, tmp_path / "out")
    assert not calls
    monkeypatch.setattr(_kernels, "ONE_OFF_MIN_BYTES", 0)
    engine.merge_to_disk(recipe, tmp_path / "out2")
    assert calls
    from safetensors.torch import load_file

    one, two = (load_file(tmp_path / d / "model.safetensors") for d in ("out", "out2"))
    assert all(torch.equal(one[k].view(torch.int32), two[k].view(torch.int32)) for k in one)


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_on_bf16_accumulates_chunks_into_the_output_with_the_same_bits(monkeypatch, normalize):
    from evomerge.merge import _util
    from evomerge.methods import METHODS

    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(301, 97, generator=gen).to(torch.bfloat16) for _ in range(3)]
    weights = [0.4, 0.35, 0.25]
    whole = torch.zeros(301, 97)
    for t, w in zip(tensors, weights, strict=True):
        whole.add_(t, alpha=w)
    if normalize:
        whole.div_(torch.tensor(sum(weights)))
    monkeypatch.setattr(_util, "_SUM_CHUNK", 1000)  # many chunks and a ragged last one
    got = METHODS.get("linear").fn(TensorGroup("t", tensors, None), weight=weights, normalize=normalize)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.view(torch.int16), whole.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masks_drawn_in_spans_on_the_workers_equal_one_pass_per_model(monkeypatch, dtype):
    # Spans of one SUM_BLOCK: the tensor crosses three span boundaries and ends mid-block.
    monkeypatch.setattr(sparsify, "SPAN", sparsify.SUM_BLOCK)
    n = 3 * sparsify.SUM_BLOCK + 12345
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(n, generator=gen).to(dtype)
    xs = [(base.float() + 0.01 * torch.randn(n, generator=gen)).to(dtype) for _ in range(3)]
    densities, seeds = [0.3, 0.5, 0.9], [11, 12, 13]
    spans = sparsify.random_masks(xs, base, densities, seeds, rescale=True)
    for x, d, seed, (keep, factor) in zip(xs, densities, seeds, spans, strict=True):
        one_keep, one_factor = sparsify.random_mask(x, base, d, sparsify.Uniform16(seed, base.device), True)
        assert np.array_equal(keep, one_keep) and factor == one_factor
        assert factor > 1  # rescaled: the kept entries' L1 is below the whole delta's


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_dare_pass_equals_the_numpy_path_bit_for_bit(monkeypatch, dtype):
    # Two whole blocks go through the compiled pass, the tail through numpy: the masks and the
    # L1 rescale factor (numpy's pairwise float64 sums, which the kernel reproduces) are equal.
    n = 2 * sparsify.SUM_BLOCK + 1000
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(n, generator=gen).to(dtype)
    x = (base.float() + 0.01 * torch.randn(n, generator=gen)).to(dtype)
    same = torch.rand(n, generator=gen) < 0.6
    x[same] = base[same]  # deltas mostly exact zeros, as a bf16 fine-tune's
    results, calls = {}, []
    real = sparsify._kernels.dare_block
    for fused in (True, False):
        monkeypatch.setattr(sparsify._kernels, "ENABLED", fused)
        monkeypatch.setattr(sparsify._kernels, "dare_block", lambda *a, f=fused: calls.append(f) or real(*a))
        results[fused] = sparsify.random_mask(x, base, 0.3, sparsify.Uniform16(7, base.device), True)
    assert calls and set(calls) == {True}  # the compiled pass ran, and only where enabled
    assert np.array_equal(results[True][0], results[False][0])
    assert results[True][1] == results[False][1] and results[True][1] > 1
