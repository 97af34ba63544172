"""LiNeS, PCB-merging and CABS against hand-computed cases of their formulas, and laws that a
wrong formula would break (the conformance suite covers dtypes, shapes and finiteness)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.errors import RecipeError
from evomerge.io import StateDictSource
from evomerge.merge import TensorGroup, get_method
from evomerge.merge.cabs import cabs_masks, nm_mask
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.merge.registry import Param
from evomerge.mergekit_compat import MergekitExportError, to_mergekit
from evomerge.recipe import Recipe
from evomerge.testing import llama_config, llama_state


def call(name: str, group: TensorGroup, **params) -> torch.Tensor:
    spec = get_method(name)
    n = len(group.tensors)
    full = {p.name: [p.default] * n if p.scope.value == "per_model" else p.default
            for p in spec.params if not p.required}
    return spec.fn(group, **(full | params))


# --- LiNeS -------------------------------------------------------------------------------------


def test_lines_scales_the_weighted_sum_by_depth():
    base = torch.tensor([1.0, -1.0])
    a, b = base + torch.tensor([1.0, 2.0]), base + torch.tensor([3.0, -2.0])
    group = TensorGroup("model.layers.1.mlp.up_proj.weight", [a, b], base, layer=1, num_layers=3)
    # sum of weighted task vectors: [1, 2] + 0.5 * [3, -2] = [2.5, 1]; lambda(1) = 0.2 + 0.6 * 1/2
    out = call("lines", group, weight=[1.0, 0.5], alpha=0.2, beta=0.6)
    torch.testing.assert_close(out, base + 0.5 * torch.tensor([2.5, 1.0]))
    # alpha unset: 1 / (two models); lambda(1) = 0.5 + 0.6 * 1/2 = 0.8
    out = call("lines", group, weight=[1.0, 0.5], beta=0.6)
    torch.testing.assert_close(out, base + 0.8 * torch.tensor([2.5, 1.0]))
    # outside the layer stack: alpha alone
    head = TensorGroup("lm_head.weight", [a, b], base, layer=None, num_layers=3)
    out = call("lines", head, weight=[1.0, 0.5], alpha=0.2, beta=0.6)
    torch.testing.assert_close(out, base + 0.2 * torch.tensor([2.5, 1.0]))


def test_lines_without_a_depth_names_the_tensor():
    group = TensorGroup("model.layers.0.mlp.up_proj.weight", [torch.ones(2)], torch.zeros(2))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*num_layers"):
        call("lines", group, beta=0.5)


@pytest.fixture(scope="module")
def plus_one():
    """A 3-layer base and an expert that is the base plus 1 everywhere, in memory."""
    config = llama_config(tied=False, layers=3)
    base = llama_state(config, torch.Generator().manual_seed(0))
    expert = {k: v + 1 for k, v in base.items()}
    merger = InMemoryMerger({"base": StateDictSource("base", base, config),
                             "expert": StateDictSource("expert", expert, config)})
    return merger, base


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if parts[1] == "layers" else None


def test_lines_through_the_planner_layer_0_gets_alpha_and_the_last_alpha_plus_beta(plus_one):
    merger, base = plus_one
    recipe = Recipe.from_dict({
        "merge_method": "lines", "base_model": "base",
        "parameters": {"alpha": 0.25, "beta": 0.5},
        "models": [{"model": "base"}, {"model": "expert"}],
    })
    out = merger.merge(recipe)
    expected = {None: 0.25, 0: 0.25, 1: 0.5, 2: 0.75}  # alpha + beta * l / (L - 1), L = 3
    seen = set()
    for name, t in out.items():
        layer = _layer_of(name)
        seen.add(layer)
        torch.testing.assert_close(t - base[name], torch.full_like(t, expected[layer]),
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert seen == set(expected)


def test_lines_uses_the_output_layer_index_of_a_layer_path(plus_one):
    merger, base = plus_one
    # Layers 1..2 of the sources become output layers 0..1 of a 2-layer model.
    sources = [{"model": m, "layer_range": [1, 3]} for m in ("base", "expert")]
    recipe = Recipe.from_dict({
        "merge_method": "lines", "base_model": "base",
        "parameters": {"alpha": 0.25, "beta": 0.5}, "slices": [{"sources": sources}],
    })
    out = merger.merge(recipe)
    for layer, factor in ((0, 0.25), (1, 0.75)):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        source = f"model.layers.{layer + 1}.mlp.down_proj.weight"
        torch.testing.assert_close(out[name] - base[source], torch.full_like(out[name], factor))


# --- PCB-merging -------------------------------------------------------------------------------


def test_pcb_single_task_by_hand():
    # tau = [0, 1, 2, 3], d = 4, one task (n = 1), pcb_ratio 0.5:
    #   clip: sorted |tau| at int(4 * 1e-4) = 0 and int(4 * 0.9999 - 1) = 2 -> |tau| in [0, 2]
    #         clipped = [0, 1, 2, 2]
    #   intra = exp(1 * minmax(clipped)^2) = exp([0, .25, 1, 1])
    #   inter = tanh(tau * tau) = tanh([0, 1, 4, 9])
    #   score = [0, 0.978, 2.7165, 2.7183]; raised to its sorted value at int(4 * 0.5) = 2,
    #   min-max: [0, 0, 0, 1]; merged = clipped * scale / scale = [0, 0, 0, 2]
    base = torch.tensor([0.5, 0.5, 0.5, 0.5])
    x = base + torch.tensor([0.0, 1.0, 2.0, 3.0])
    out = call("pcb", TensorGroup("w", [x], base), weight=[1.0], pcb_ratio=0.5)
    torch.testing.assert_close(out, base + torch.tensor([0.0, 0.0, 0.0, 2.0]))
    out = call("pcb", TensorGroup("w", [x], base), weight=[1.5], pcb_ratio=0.5)
    torch.testing.assert_close(out, base + torch.tensor([0.0, 0.0, 0.0, 3.0]))


def _pcb_reference(tvs: np.ndarray, lams: list[float], ratio: float, clip: float = 1e-4) -> np.ndarray:
    """The official pcb-merging.py, transcribed to numpy row by row (float64)."""
    n, d = tvs.shape

    def normalize(row):
        return (row - row.min()) / (row.max() - row.min())

    def clamp(row, min_ratio, max_ratio):
        s = np.sort(row)
        return np.clip(row, s[int(d * min_ratio)], s[int(d * (1 - max_ratio) - 1)])

    abs_c = np.stack([clamp(np.abs(r), clip, clip) for r in tvs])
    clamped = np.sign(tvs) * abs_c
    intra = np.exp(n * np.stack([normalize(r) for r in abs_c]) ** 2)
    inter = np.tanh(tvs * tvs.sum(axis=0))
    score = intra * inter
    scale = np.stack([normalize(clamp(r, 1 - ratio, 0)) for r in score])
    weighted = clamped * np.asarray(lams)[:, None]
    return (weighted * scale).sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 1.0])
def test_pcb_matches_the_official_formulas(ratio):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 7, generator=g)
    xs = [base + 0.1 * torch.randn(6, 7, generator=g) for _ in range(3)]
    lams = [1.2, 0.9, 1.0]
    out = call("pcb", TensorGroup("w", xs, base), weight=lams, pcb_ratio=ratio)
    tvs = np.stack([(x - base).reshape(-1).double().numpy() for x in xs])
    expected = base.double() + torch.from_numpy(_pcb_reference(tvs, lams, ratio)).reshape(6, 7)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_pcb_drops_entries_that_fight_the_consensus():
    # Task 2 agrees with task 1 on the first half and opposes it (more weakly) on the second:
    # there its inter score tanh(tau_2 * (tau_1 + tau_2)) is negative, so it ranks below every
    # agreeing entry and, keeping under half, task 2 never pulls the second half its way.
    g = torch.Generator().manual_seed(5)
    mag = 1 + torch.rand(40, generator=g)
    t1 = mag
    t2 = torch.cat([mag[:20] * 0.8, -mag[20:] * 0.5])
    base = torch.zeros(40)
    out = call("pcb", TensorGroup("w", [base + t1, base + t2], base), weight=[1.0, 1.0], pcb_ratio=0.4)
    assert (out[20:] >= 0).all() and (out[20:] > 0).any()


def test_pcb_keeps_nothing_at_ratio_0_and_one_task_whole_at_ratio_1():
    g = torch.Generator().manual_seed(6)
    base, x = torch.randn(30, generator=g), torch.randn(30, generator=g)
    torch.testing.assert_close(call("pcb", TensorGroup("w", [x], base), weight=[1.0], pcb_ratio=0.0), base)
    # One task, nothing dropped: the weighted mean of one task is its (clipped) task vector,
    # except where its score is the row's minimum (min-max gives that entry 0).
    out = call("pcb", TensorGroup("w", [x], base), weight=[1.0], pcb_ratio=1.0)
    tv = x - base
    top = tv.abs().max()
    clipped = torch.sign(tv) * tv.abs().clamp(max=tv.abs().sort().values[-2])  # int(30*0.9999-1) = 28
    changed = (out - base) != 0
    assert changed.sum() == 29  # all but the lowest score (the smallest |tau|)
    torch.testing.assert_close((out - base)[changed], clipped[changed])
    assert (out - base).abs().max() < top


# --- CABS --------------------------------------------------------------------------------------


def test_cabs_by_hand_and_in_recipe_order():
    base = torch.zeros(4)
    t1, t2 = torch.tensor([3.0, 1.0, -2.0, 5.0]), torch.tensor([4.0, 2.0, 1.0, -1.0])
    # 1:2, t1 first: blocks [3, 1] -> 3, [-2, 5] -> 5; t2 gets what is left: 2 and 1.
    out = call("cabs", TensorGroup("w", [t1, t2], base), weight=[1.0, 0.5], n=1, m=2)
    torch.testing.assert_close(out, torch.tensor([3.0, 0.5 * 2, 0.5 * 1, 5.0]))
    # t2 first: [4, 2] -> 4, [1, -1] -> the tie goes to the earlier entry, 1; t1 gets 1 and 5.
    out = call("cabs", TensorGroup("w", [t2, t1], base), weight=[0.5, 1.0], n=1, m=2)
    torch.testing.assert_close(out, torch.tensor([0.5 * 4, 1.0, 0.5 * 1, 5.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cabs_block_choice_matches_a_plain_loop(dtype):
    """Small integer magnitudes, so ties abound: the n largest free entries of each block,
    the earlier one first among equals, as a loop over blocks picks them."""
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        mag = torch.randint(0, 4, (37,), generator=g).to(dtype)
        free = torch.rand(37, generator=g) > 0.3
        expected = torch.zeros(37, dtype=torch.bool)
        for start in range(0, 37, 8):
            candidates = [i for i in range(start, min(start + 8, 37)) if free[i]]
            expected[sorted(candidates, key=lambda i: (-mag[i].item(), i))[:3]] = True
        assert torch.equal(nm_mask(mag, free, 3, 8), expected)


@pytest.mark.parametrize("shape", [(6, 16), (100,)])  # 100 = 12 blocks of 8 and a tail of 4
def test_cabs_masks_never_overlap_and_keep_n_of_every_m(shape):
    n, m, tasks = 2, 8, 3
    g = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=g)
    xs = [base + torch.randn(shape, generator=g) for _ in range(tasks)]
    weight = [0.7, 1.0, 1.3]
    pairs = list(cabs_masks(base, xs, n, m))
    masks = torch.stack([keep for _, keep in pairs])
    assert masks.sum(dim=0).max() <= 1  # no entry kept by two tasks
    d = masks.shape[1]
    full = d // m * m
    per_block = masks[:, :full].reshape(tasks, -1, m).sum(dim=2)
    assert (per_block == n).all()
    # A shorter last block keeps n of what is still free in it (tail 4: 2, 2, then none).
    tail = d - full
    assert masks[:, full:].sum(dim=1).tolist() == [min(n, max(0, tail - n * i)) for i in range(tasks)]
    # Each task keeps the largest of what the earlier tasks left in every block.
    free = torch.ones(d, dtype=torch.bool)
    for tv, keep in pairs:
        mags = tv.abs()
        for start in range(0, d, m):
            block = slice(start, min(start + m, d))
            kept, left = mags[block][keep[block]], mags[block][free[block] & ~keep[block]]
            assert left.numel() == 0 or kept.min() >= left.max()
        free &= ~keep
    # The merge is the base plus the weighted, masked task vectors.
    out = call("cabs", TensorGroup("w", xs, base), weight=weight, n=n, m=m)
    expected = base.reshape(-1) + sum(w * tv * keep for (tv, keep), w in zip(pairs, weight, strict=True))
    torch.testing.assert_close(out.reshape(-1), expected)


def test_cabs_refuses_n_above_m_and_fractional_n(plus_one):
    merger, _ = plus_one

    def recipe(**params):
        return Recipe.from_dict({"merge_method": "cabs", "base_model": "base", "parameters": params,
                                 "models": [{"model": "base"}, {"model": "expert"}]})

    with pytest.raises(RecipeError, match="n = 300 is more than m = 256"):
        merger.plan(recipe(n=300, m=256))
    with pytest.raises(RecipeError, match="'n' must be a whole number, got 2.5"):
        merger.plan(recipe(n=[2, 3], m=8))  # a gradient: 2.5 in the middle layer
    assert Param("n", int).coerce("4") == 4 and math.isclose(Param("n", int).coerce(4.0), 4)


@pytest.mark.parametrize("method", ["lines", "pcb", "cabs"])
def test_these_recipes_export_no_mergekit_config(method):
    recipe = Recipe.from_dict({"merge_method": method, "base_model": "b",
                               "models": [{"model": "b"}, {"model": "a"}]})
    with pytest.raises(MergekitExportError, match=rf"{method}.*mergekit 0\.1\.5 has no such method"):
        to_mergekit(recipe)
