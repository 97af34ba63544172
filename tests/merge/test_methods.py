"""Property tests of the merge operators, called directly on tensors."""

from __future__ import annotations

import pytest
import torch

from evomerge.merge import METHODS, TensorGroup, get_method
from evomerge.merge.order_stats import magnitude_order_stats
from evomerge.merge.sparsify import CHUNK

SHAPE = (48, 40)


def tensors(n: int, seed: int = 0, shape=SHAPE) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def call(name: str, group: TensorGroup, **params) -> torch.Tensor:
    spec = get_method(name)
    n = len(group.tensors)
    full = {}
    for p in spec.params:
        if p.name in params:
            full[p.name] = params[p.name]
        elif not p.required:
            full[p.name] = [p.default] * n if p.scope.value == "per_model" else p.default
    return spec.fn(group, **full)


TASK_VECTOR_METHODS = [
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
]


def test_every_builtin_method_is_registered():
    assert set(METHODS.names()) >= set(TASK_VECTOR_METHODS) | {
        "linear",
        "slerp",
        "nuslerp",
        "model_stock",
        "passthrough",
    }


@pytest.mark.parametrize("name", TASK_VECTOR_METHODS)
def test_no_task_vectors_returns_base(name):
    base = tensors(1)[0]
    out = call(name, TensorGroup("w", [], base), weight=[], density=[])
    assert torch.equal(out, base)


@pytest.mark.parametrize("name", TASK_VECTOR_METHODS)
def test_expert_equal_to_base_is_identity(name):
    base = tensors(1)[0]
    out = call(
        name,
        TensorGroup("w", [base.clone(), base.clone()], base, seed=3),
        weight=[0.5, 0.7],
        density=[0.5, 0.5],
    )
    assert torch.allclose(out, base)


def test_linear_single_model_is_identity_and_weights_normalise():
    a, b = tensors(2)
    assert torch.allclose(call("linear", TensorGroup("w", [a]), weight=[3.0]), a)
    assert torch.allclose(
        call("linear", TensorGroup("w", [a, b]), weight=[1.0, 3.0]), 0.25 * a + 0.75 * b, atol=1e-6
    )


def test_linear_is_permutation_invariant():
    a, b, c = tensors(3)
    x = call("linear", TensorGroup("w", [a, b, c]), weight=[0.2, 0.3, 0.5])
    y = call("linear", TensorGroup("w", [c, a, b]), weight=[0.5, 0.2, 0.3])
    assert torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("name", ["slerp"])
def test_slerp_endpoints_and_midpoint_norm(name):
    a, b = tensors(2)
    assert torch.allclose(call(name, TensorGroup("w", [b], a), t=0.0), a, atol=1e-6)
    assert torch.allclose(call(name, TensorGroup("w", [b], a), t=1.0), b, atol=1e-6)
    # Unit vectors stay on the sphere halfway (linear interpolation would shrink them).
    ua, ub = a / a.norm(), b / b.norm()
    mid = call(name, TensorGroup("w", [ub], ua), t=0.5)
    assert abs(mid.norm().item() - 1.0) < 1e-5


def test_slerp_colinear_falls_back_to_lerp():
    a = tensors(1)[0]
    b = 2 * a
    assert torch.allclose(call("slerp", TensorGroup("w", [b], a), t=0.25), 1.25 * a, atol=1e-6)


def test_nuslerp_weights_pick_endpoints():
    a, b = tensors(2)
    assert torch.allclose(
        call("nuslerp", TensorGroup("w", [a, b]), weight=[1.0, 0.0]), a, atol=1e-5
    )
    assert torch.allclose(
        call("nuslerp", TensorGroup("w", [a, b]), weight=[0.0, 1.0]), b, atol=1e-5
    )


def test_ties_density_one_unit_weights_no_conflict_equals_task_arithmetic():
    base = tensors(1)[0]
    delta = tensors(1, seed=5)[0].abs()  # all task vectors agree in sign: TIES elects nothing away
    experts = [base + delta, base + 0.5 * delta]
    ties = call(
        "ties",
        TensorGroup("w", experts, base),
        weight=[1.0, 1.0],
        density=[1.0, 1.0],
        normalize=False,
    )
    ta = call("task_arithmetic", TensorGroup("w", experts, base), weight=[1.0, 1.0])
    assert torch.allclose(ties, ta, atol=1e-6)


def test_ties_keeps_the_density_fraction_of_largest_magnitudes():
    base = torch.zeros(1000)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    out = call("ties", TensorGroup("w", [x], base), weight=[1.0], density=[0.1])
    kept = out != 0
    assert kept.sum().item() == 100
    assert x.abs()[kept].min() >= x.abs()[~kept].max()


def test_ties_order_statistics_are_exact_on_large_tensors():
    n = 4 * CHUNK + 12345  # large enough for the sampled path
    g = torch.Generator().manual_seed(1)
    x, base = torch.randn(n, generator=g), torch.randn(n, generator=g)
    mags = (x - base).abs().sort().values
    ranks = [1, 17, n // 3, n // 2, n - 5, n]
    assert magnitude_order_stats(x, base, ranks) == [mags[r - 1].item() for r in ranks]


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_law_kept_fraction_rescale_and_determinism(name, density):
    n = 200_000
    base = torch.zeros(n)
    x = torch.randn(n, generator=torch.Generator().manual_seed(2))
    group = TensorGroup("model.layers.0.mlp.up_proj.weight", [x], base, seed=7)
    out = call(name, group, weight=[1.0], density=[density])
    kept = out != 0
    frac = kept.float().mean().item()
    assert abs(frac - density) < 4 * (density * (1 - density) / n) ** 0.5 + 1e-4
    # Survivors are unchanged up to one common factor: the L1 norm ratio (mergekit's rescale).
    factor = x.abs().sum() / x[kept].abs().sum()
    assert torch.allclose(out[kept], x[kept] * factor, rtol=1e-5)
    assert out.abs().sum().item() == pytest.approx(x.abs().sum().item(), rel=1e-5)
    again = call(name, TensorGroup(group.name, [x], base, seed=7), weight=[1.0], density=[density])
    assert torch.equal(out, again)
    other = call(name, TensorGroup(group.name, [x], base, seed=8), weight=[1.0], density=[density])
    assert not torch.equal(out, other)


@pytest.mark.parametrize("name", ["della", "della_linear"])
def test_della_keeps_larger_magnitudes_more_often(name):
    rows, width = 200, 500
    base = torch.zeros(rows, width)
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(3))
    out = call(
        name, TensorGroup("w", [x], base, seed=1), weight=[1.0], density=[0.5], epsilon=[0.3]
    )
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    order = x.abs().argsort(dim=1)
    kept_sorted = torch.gather(kept, 1, order).float().mean(dim=0)
    # probability rises linearly from 0.2 (smallest) to 0.8 (largest) in each row
    assert kept_sorted[:50].mean().item() == pytest.approx(0.215, abs=0.03)
    assert kept_sorted[-50:].mean().item() == pytest.approx(0.785, abs=0.03)
    same = call(
        name, TensorGroup("w", [x], base, seed=1), weight=[1.0], density=[0.5], epsilon=[0.3]
    )
    assert torch.equal(out, same)


def test_della_rejects_epsilon_outside_the_unit_interval():
    base = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="epsilon"):
        call(
            "della",
            TensorGroup("w", [torch.ones(4, 4)], base, seed=0),
            weight=[1.0],
            density=[0.5],
            epsilon=[0.6],
        )


def test_model_stock_identical_experts_move_fully_to_them():
    base, e = tensors(2)
    out = call("model_stock", TensorGroup("w", [e.clone(), e.clone()], base))
    assert torch.allclose(out, e, atol=1e-5)


def test_passthrough_scales():
    a = tensors(1)[0]
    assert torch.equal(call("passthrough", TensorGroup("w", [a]), scale=[None]), a)
    assert torch.allclose(call("passthrough", TensorGroup("w", [a]), scale=[0.5]), a * 0.5)


def test_bfloat16_inputs_stay_bfloat16():
    base, x = (t.to(torch.bfloat16) for t in tensors(2))
    for name in ["ties", "dare_ties", "task_arithmetic"]:
        out = call(name, TensorGroup("w", [x], base, seed=0), weight=[1.0], density=[0.5])
        assert out.dtype == torch.bfloat16


def test_nearswap_swaps_close_entries_in_whole_and_far_ones_in_proportion():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    other = torch.tensor([0.1, 0.4, -1.0, 1.0])
    out = call("nearswap", TensorGroup("w", [other], base), t=0.2)
    # shares: 0.2/0.1 -> 1, 0.2/0.4 = 0.5, 0.2/1 = 0.2, identical -> 1 (distance floored)
    assert torch.allclose(out, torch.tensor([0.1, 0.2, -0.2, 1.0]))
    assert torch.equal(call("nearswap", TensorGroup("w", [other], base), t=0.0), base)


def test_multislerp_of_two_orthogonal_unit_vectors_is_their_normalised_midpoint():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    out = call("multislerp", TensorGroup("w", [a, b]), weight=[1.0, 1.0])
    assert torch.allclose(out, torch.tensor([1.0, 1.0, 0.0]) / 2**0.5, atol=1e-6)
    # A base moves the sphere's origin: the same answer, shifted.
    base = torch.tensor([0.0, 0.0, 5.0])
    shifted = call("multislerp", TensorGroup("w", [a + base, b + base], base), weight=[1.0, 1.0])
    assert torch.allclose(shifted, out + base, atol=1e-6)
    # Weights 3:1 put it a quarter of the way (22.5 degrees) from a.
    quarter = call("multislerp", TensorGroup("w", [a, b]), weight=[3.0, 1.0])
    angle = torch.atan2(quarter[1], quarter[0])
    assert abs(angle.item() - torch.pi / 8) < 0.1  # the tangent-space average is close to it


def test_multislerp_refuses_antipodal_inputs_that_cancel():
    a = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="weighted mean direction is zero"):
        call("multislerp", TensorGroup("w", [a, -a, a * 0 + torch.tensor([0.0, 0.0])]), weight=[1.0, 1.0, 1.0])


def test_karcher_mean_of_two_directions_bisects_them_and_keeps_the_mean_norm():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    out = call("karcher", TensorGroup("w", [a, b]))
    assert torch.allclose(out, torch.tensor([3.0, 3.0]) / 2**0.5, atol=1e-5)
    # Three directions at 0, 60 and 120 degrees: the Frechet mean is the middle one (not the
    # normalised Euclidean mean, which is the same here by symmetry), length the mean norm.
    dirs = [torch.tensor([1.0, 0.0]), torch.tensor([0.5, 3**0.5 / 2]), torch.tensor([-0.5, 3**0.5 / 2])]
    out = call("karcher", TensorGroup("w", dirs), max_iter=50, tol=1e-9)
    assert torch.allclose(out, dirs[1], atol=1e-5)


def test_sce_keeps_the_most_varied_entries_weighs_by_energy_and_erases_minority_signs():
    base = torch.zeros(4)
    a = torch.tensor([1.0, 2.0, 0.0, -1.0])
    b = torch.tensor([1.0, -2.0, 3.0, 1.0])
    # All entries: energies 6/4 and 15/4 -> shares 2/7 and 5/7. Entry 1: the sum is 0 (elected +),
    # so only a's +2 survives; entry 2: a's 0 does not count; entry 3: b's +1 wins.
    out = call("sce", TensorGroup("w", [a, b], base), select_topk=1.0)
    assert torch.allclose(out, torch.tensor([1.0, 2.0, 3.0, 1.0]))
    # Half of the 3 entries that vary (entries 1, 2, 3): the single most varied one, entry 1.
    top = call("sce", TensorGroup("w", [a, b], base), select_topk=0.5)
    assert torch.allclose(top, torch.tensor([0.0, 2.0, 0.0, 0.0]))


def test_arcee_fusion_takes_the_other_model_only_at_outlying_importance():
    base, noise = tensors(2, seed=3, shape=(16, 32))
    other = base + 0.01 * noise
    other[5, 7] += 3.0  # two large changes that move their rows' softmax
    other[11, 0] -= 3.0
    out = call("arcee_fusion", TensorGroup("w", [other], base))
    fused = out != base
    assert fused[5, 7] and fused[11, 0]
    # fused: base + (other - base), as mergekit computes it: the other's value up to one rounding
    assert torch.allclose(out[fused], other[fused], rtol=0, atol=1e-6) and torch.equal(out[~fused], base[~fused])
    assert fused.float().mean() < 0.25  # above the upper fence only, not a quarter of the entries


def test_ram_keeps_unique_changes_whole_and_averages_shared_ones():
    base = torch.zeros(4)
    a = torch.tensor([0.5, 1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 3.0, 0.0, 1e-7])  # its last change is below epsilon: not a contribution
    out = call("ram", TensorGroup("w", [a, b], base))
    assert torch.allclose(out, torch.tensor([0.5, 2.0, 0.0, 0.0]))
    # RAM+: a has 1 shared and 1 unique entry (rho 1, capped at alpha 0.5): its unique change x1.25.
    plus = call("ramplus_tl", TensorGroup("w", [a, b], base), r=0.5, alpha=0.5)
    assert torch.allclose(plus, torch.tensor([0.5 * 1.25, 2.0, 0.0, 0.0]))
