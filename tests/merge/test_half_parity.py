"""evomerge's bf16 / fp16 merges equal mergekit's on the same config.

A recipe's ``dtype`` is the compute dtype, as in mergekit. ``dtype: bfloat16`` (or float16):
mergekit's arithmetic in that dtype, tensor-exact. The one allowed difference is where mergekit's
result depends on its sort order: a magnitude selection (TIES, breadcrumbs) keeps every entry
tied at its threshold in evomerge (README), and mergekit a sort-order choice among them, so
entries where a model's rounded delta sits exactly at a threshold may differ, and only those.
``dtype: float32`` with ``out_dtype: bfloat16``: computed in float32 and rounded once, as mergekit
does, also from bf16 sources read without a float32 copy (and merged into a bf16 resident model,
as a search worker does).
"""

from __future__ import annotations

import pytest
import torch
from mergekit_ref import at_thresholds, differing, load_dir, run_mergekit
from test_mergekit_parity import CASES

from evomerge.merge import plan as plan_module
from evomerge.merge.engine import merge_to_disk
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.recipe import Recipe
from evomerge.testing import make_family

EXACT = ["arcee_fusion", "karcher", "karcher_with_base_few_steps", "linear", "linear_gradient_filters",
         "model_stock", "model_stock_filter_wise", "multislerp_unnormalized", "multislerp_with_base",
         "nearswap", "nuslerp_row_wise", "nuslerp_with_base", "passthrough_frankenmerge", "ram",
         "ramplus_tl", "sce", "sce_all_entries", "slerp_models", "slerp_slices", "task_arithmetic"]
# Magnitude selections: exact but at entries tied at a threshold.
SELECTING = {"ties": "magnitude", "ties_per_slice": "magnitude", "ties_unnormalized_int8": "magnitude",
             "breadcrumbs": "magnitude_outliers"}
HALF = ["bfloat16", "float16"]


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory):
    """Sources stored in bf16, their deltas mostly exact zeros (as a bf16 fine-tune's)."""
    return make_family(tmp_path_factory.mktemp("bf16"), tied=False, seed=4, dtype=torch.bfloat16, zeros=0.6)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", EXACT)
def test_half_precision_merge_is_mergekits(case, dtype, untied_family, tmp_path):
    config = {**CASES[case](untied_family), "dtype": dtype}
    got = load_dir(merge_to_disk(Recipe.from_dict(config), tmp_path / "ev").out)
    expected = run_mergekit(config, tmp_path / "mk")
    assert all(t.dtype == getattr(torch, dtype) for t in got.values())
    for name, differs in differing(got, expected).items():
        assert not differs.any(), f"{case}/{dtype}: {name}: {int(differs.sum())} entries differ"


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", sorted(SELECTING))
def test_half_precision_selection_differs_only_at_ties(case, dtype, untied_family, tmp_path):
    config = {**CASES[case](untied_family), "dtype": dtype}
    recipe = Recipe.from_dict(config)
    got = load_dir(merge_to_disk(recipe, tmp_path / "ev").out)
    differs = differing(got, run_mergekit(config, tmp_path / "mk"))
    tied = at_thresholds(recipe, getattr(torch, dtype), SELECTING[case])
    assert any(t.any() for t in tied.values())  # half precision ties: the exemption is exercised
    for name, d in differs.items():
        outside = d & ~tied.get(name, torch.zeros_like(d))
        assert not outside.any(), f"{case}/{dtype}: {name}: {int(outside.sum())} untied entries differ"


@pytest.mark.parametrize("case", ["task_arithmetic", "linear", "sce", "ties"])
def test_float32_merge_of_bf16_sources_is_mergekits(case, bf16_family, tmp_path, monkeypatch):
    config = {**CASES[case](bf16_family), "dtype": "float32", "out_dtype": "bfloat16"}
    recipe = Recipe.from_dict(config)
    expected = run_mergekit(config, tmp_path / "mk")
    on_disk = load_dir(merge_to_disk(recipe, tmp_path / "ev").out)
    # A search worker: bf16 sources, a bf16 resident model, the recipe computing in float32.
    merger = InMemoryMerger({str(p): str(p) for p in bf16_family.values()}, dtype=torch.bfloat16)
    resident = {k: torch.zeros_like(v) for k, v in on_disk.items()}
    handed_over = []  # the ops whose bf16 sources went to the method unconverted
    real = plan_module.computing_in_float32
    monkeypatch.setattr(plan_module, "computing_in_float32", lambda: handed_over.append(1) or real())
    merger.merge(recipe, into=resident)
    assert bool(handed_over) == (case != "sce")  # (sce converts its inputs, no float32 reader)
    tied = (at_thresholds(recipe, torch.float32, "magnitude") if case == "ties" else {})
    for got in (on_disk, resident):
        for name, d in differing(got, expected).items():
            outside = d & ~tied.get(name, torch.zeros_like(d))
            assert not outside.any(), f"{case}: {name}: {int(outside.sum())} entries differ"


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_rescaled_selection_differs_by_its_factor_only(dtype, untied_family, tmp_path):
    # breadcrumbs_ties with rescale: true: evomerge sums the L1 norms in float64 (mergekit in the
    # dtype, in torch's order), so the rescale factor can differ in its last bit, and every kept
    # entry by about one step of the dtype at the scale of its inputs (the base and the weighted
    # deltas: where they cancel, the result is smaller): bounded to four steps away from ties,
    # but for the rare entry whose elected sign flips with that bit (the weighted deltas nearly
    # cancel): at most one in a thousand.
    config = {**CASES["breadcrumbs_ties"](untied_family), "dtype": dtype}
    recipe = Recipe.from_dict(config)
    got = load_dir(merge_to_disk(recipe, tmp_path / "ev").out)
    expected = run_mergekit(config, tmp_path / "mk")
    tied = at_thresholds(recipe, getattr(torch, dtype), "magnitude_outliers")
    base = load_dir(untied_family["base"])
    experts = [load_dir(untied_family[f"expert{i}"]) for i in (0, 1)]
    step = 2.0 ** -(8 if dtype == "bfloat16" else 11)  # half of the relative spacing
    beyond = total = 0
    for name, ref in expected.items():
        ref = ref.to(got[name].dtype).double()
        scale = base[name].double().abs() + sum((e[name].double() - base[name].double()).abs() for e in experts)
        gap = (got[name].double() - ref).abs()
        beyond += int(((gap > 8 * step * scale + 1e-7) & ~tied[name]).sum())
        total += ref.numel()
    assert beyond <= total / 1000, f"{dtype}: {beyond} of {total} entries beyond four steps"
