"""The spectral merge methods (tsv, iso_c, iso_cts, star) against their papers' formulas.

Each method is checked on a case small enough to work out by hand, against an independent numpy
re-derivation (float64; orthogonal polar factors through eigendecompositions, ``A (A^T A)^-1/2``,
rather than the SVD the methods use), and on a property that a wrong formula would break.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.errors import RecipeError
from evomerge.merge import Scope, TensorGroup, get_method
from evomerge.merge.isotropic import subspace_sizes
from evomerge.merge.tsv import kept_rank
from evomerge.mergekit_compat import MergekitExportError, to_mergekit
from evomerge.recipe import Recipe

METHODS = ["tsv", "iso_c", "iso_cts", "star"]
W = "model.layers.0.mlp.up_proj.weight"


def merge(method: str, base, tensors, name: str = W, **params) -> torch.Tensor:
    spec = get_method(method)
    full = {p.name: params.get(p.name, p.default if p.scope is Scope.SHARED else [p.default] * len(tensors))
            for p in spec.params}
    return spec.fn(TensorGroup(name, list(tensors), base), **full)


def rand(shape, seed, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def sv(x: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(x.numpy(), compute_uv=False)


# -- numpy re-derivations -------------------------------------------------------------------------

def np_orthonormal_columns(a):
    """Polar factor of a tall matrix with independent columns: A (A^T A)^(-1/2)."""
    w, q = np.linalg.eigh(a.T @ a)
    return a @ q @ np.diag(w ** -0.5) @ q.T


def np_orthonormal_rows(a):
    return np_orthonormal_columns(a.T).T


def np_tsv(tvs, r):
    us, ss, vts = [], [], []
    for tv in tvs:
        u, s, vt = np.linalg.svd(tv, full_matrices=False)
        us.append(u[:, :r])
        ss.append(s[:r])
        vts.append(vt[:r])
    u_perp = np_orthonormal_columns(np.hstack(us))
    vt_perp = np_orthonormal_rows(np.vstack(vts))
    return u_perp @ np.diag(np.concatenate(ss)) @ vt_perp


def np_iso_cts(tvs, common, per_task):
    """Blocks laid out as the official code does: task 1, ..., task T, then the common space."""
    u, s, vt = np.linalg.svd(sum(tvs), full_matrices=False)
    uc, sc, vtc = u[:, :common], s[:common], vt[:common]
    us, ss, vts = [], [], []
    for tv in tvs:
        ut, st, vtt = np.linalg.svd(tv - uc @ uc.T @ tv, full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vts.append(vtt[:per_task])
    u_all = np.hstack([*us, uc])
    vt_all = np.vstack([*vts, vtc])
    mean = np.concatenate([*ss, sc]).mean()
    return mean * np_orthonormal_columns(u_all) @ np_orthonormal_rows(vt_all)


def np_star(tv, eta):
    u, s, vt = np.linalg.svd(tv, full_matrices=False)
    r = 1
    while s[:r].sum() < eta / 100 * s.sum():
        r += 1
    return u[:, :r] @ np.diag(s[:r] * s.sum() / s[:r].sum()) @ vt[:r]


# -- TSV --------------------------------------------------------------------------------------------

def test_tsv_hand_case_two_rank_one_tasks_at_45_degrees():
    # tau1 = 1 * e1 e1^T, tau2 = 2 * w w^T with w = (e1 + e2) / sqrt 2 (45 degrees from e1).
    # The polar factor of [e1, w] turns both by 22.5 degrees away from their bisector, to
    # p1 = (cos 22.5, -sin 22.5), p2 = (sin 22.5, cos 22.5); the same for V. So the merge is
    # 1 p1 p1^T + 2 p2 p2^T = [[(3 - c)/2, c/2], [c/2, (3 + c)/2]] with c = 1/sqrt 2
    # (task arithmetic would give [[2, 1], [1, 1]]).
    c = 1 / math.sqrt(2)
    base = t([[1.0, -1.0], [0.5, 2.0]])
    tau1, tau2 = t([[1.0, 0.0], [0.0, 0.0]]), t([[1.0, 1.0], [1.0, 1.0]])
    expected = t([[(3 - c) / 2, c / 2], [c / 2, (3 + c) / 2]])
    out = merge("tsv", base, [base + tau1, base + tau2])
    torch.testing.assert_close(out - base, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(merge("tsv", base, [base + tau1, base + tau2], alpha=0.5) - base,
                               0.5 * expected, rtol=0, atol=1e-12)


def test_tsv_matches_numpy_derivation():
    base = rand((7, 6), 0)
    tvs = [rand((7, 6), i) for i in (1, 2, 3)]
    for fraction, r in ((None, 2), (1 / 3, 2), (0.2, 1)):  # min(7, 6) = 6; 6 // 3 = 2
        assert kept_rank(7, 6, 3, fraction) == r
        out = merge("tsv", base, [base + tv for tv in tvs], alpha=1.3, rank_fraction=fraction)
        expected = 1.3 * np_tsv([tv.numpy() for tv in tvs], r)
        np.testing.assert_allclose((out - base).numpy(), expected, atol=1e-10)


def test_tsv_keeps_each_task_spectrum_and_decorrelates():
    # The merged delta's singular values are exactly the kept singular values of all tasks
    # (U_perp and V_perp have orthonormal columns): a sum of task vectors would not have them.
    base = rand((9, 8), 0)
    tvs = [rand((9, 8), i) for i in (1, 2)]
    out = merge("tsv", base, [base + tv for tv in tvs], rank_fraction=0.25)  # 2 per task
    kept = np.sort(np.concatenate([sv(tv)[:2] for tv in tvs]))[::-1]
    np.testing.assert_allclose(sv(out - base)[:4], kept, atol=1e-10)
    assert sv(out - base)[4] < 1e-10  # rank 4, no more


def test_tsv_one_task_with_fraction_one_is_task_arithmetic():
    base, tau = rand((6, 4), 0), rand((6, 4), 1)
    out = merge("tsv", base, [base + tau], alpha=0.7, rank_fraction=1.0)
    torch.testing.assert_close(out, base + 0.7 * tau, rtol=0, atol=1e-12)
    ta = merge("task_arithmetic", base, [base + tau], weight=[0.7])
    torch.testing.assert_close(out, ta, rtol=0, atol=1e-12)


def test_tsv_of_orthogonal_tasks_is_their_sum():
    base = rand((3, 2), 0)
    tau1, tau2 = t([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), t([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    out = merge("tsv", base, [base + tau1, base + tau2])
    torch.testing.assert_close(out, base + tau1 + tau2, rtol=0, atol=1e-12)


def test_tsv_of_two_identical_experts_adds_no_arbitrary_direction():
    # The stacked U = [u, u] is rank-deficient; its polar factor is taken on its range only, so
    # the merge is u s v^T (the official code would add s p0 r0^T, p0/r0 the SVD's choice).
    base, tau = rand((5, 4), 0), rand((5, 4), 1)
    out = merge("tsv", base, [base + tau, base + tau], rank_fraction=0.25)  # 1 per task
    u, s, vt = np.linalg.svd(tau.numpy())
    np.testing.assert_allclose((out - base).numpy(), s[0] * np.outer(u[:, 0], vt[0]), atol=1e-10)


# -- Iso-C ------------------------------------------------------------------------------------------

def test_iso_c_hand_case():
    # M = tau1 + tau2 = [[3, 0], [0, 1], [0, 0]]: singular values 3 and 1, mean 2, so the merged
    # delta is alpha * 2 * [[1, 0], [0, 1], [0, 0]].
    base = t([[0.5, 1.0], [-1.0, 0.0], [2.0, 3.0]])
    tau1, tau2 = t([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), t([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    out = merge("iso_c", base, [base + tau1, base + tau2], alpha=1.5)
    torch.testing.assert_close(out - base, t([[3.0, 0.0], [0.0, 3.0], [0.0, 0.0]]), rtol=0, atol=1e-12)


def test_iso_c_flattens_the_spectrum_and_keeps_the_nuclear_norm():
    base = rand((8, 5), 0)
    tvs = [rand((8, 5), i) for i in (1, 2, 3)]
    out = merge("iso_c", base, [base + tv for tv in tvs], alpha=0.8)
    s_m = sv(sum(tvs))
    np.testing.assert_allclose(sv(out - base), np.full(5, 0.8 * s_m.mean()), atol=1e-10)
    # the same singular vectors as M: U U^T (delta) = delta and delta V V^T = delta
    u, _, vt = np.linalg.svd(sum(tvs).numpy(), full_matrices=False)
    np.testing.assert_allclose((out - base).numpy(), 0.8 * s_m.mean() * u @ vt, atol=1e-10)


def test_iso_c_of_a_rank_deficient_sum_stays_in_its_subspace():
    # Two rank-1 task vectors in a 6 x 5 matrix: M has rank 2. The spectrum is flattened over
    # those two directions (mean (3 + 1) / 2 = 2); nothing is added in M's null space.
    base = rand((6, 5), 0)
    a, b = np.eye(6)[:, :2], np.eye(5)[:, :2]
    tau1, tau2 = torch.from_numpy(3 * np.outer(a[:, 0], b[:, 0])), torch.from_numpy(np.outer(a[:, 1], b[:, 1]))
    out = merge("iso_c", base, [base + tau1, base + tau2])
    expected = 2 * (np.outer(a[:, 0], b[:, 0]) + np.outer(a[:, 1], b[:, 1]))
    np.testing.assert_allclose((out - base).numpy(), expected, atol=1e-12)


# -- Iso-CTS ----------------------------------------------------------------------------------------

def test_iso_cts_subspace_sizes():
    assert subspace_sizes(24, 20, 3, 0.8) == (17, 1)  # int(16), round(4 / 3) = 1, 20 - 3
    assert subspace_sizes(10, 8, 2, 0.5) == (4, 2)
    assert subspace_sizes(10, 8, 2, 1.0) == (8, 0)  # all common: Iso-C
    assert subspace_sizes(5, 4, 2, 0.8) == (4, 0)  # round(0.5) = 0 (half to even)
    assert subspace_sizes(3, 3, 2, 0.0) == (1, 1)  # round(1.5) = 2 would need 4 of 3: capped


@pytest.mark.parametrize(("fraction", "common", "per_task"), [(0.5, 4, 2), (0.8, 6, 1)])
def test_iso_cts_matches_numpy_derivation(fraction, common, per_task):
    base = rand((10, 8), 0)
    tvs = [rand((10, 8), i) for i in (1, 2)]
    assert subspace_sizes(10, 8, 2, fraction) == (common, per_task)
    out = merge("iso_cts", base, [base + tv for tv in tvs], alpha=1.2, common_space_fraction=fraction)
    expected = 1.2 * np_iso_cts([tv.numpy() for tv in tvs], common, per_task)
    np.testing.assert_allclose((out - base).numpy(), expected, atol=1e-10)


def test_iso_cts_output_is_isotropic_and_fraction_one_is_iso_c():
    base = rand((12, 9), 0)
    tvs = [rand((12, 9), i) for i in (1, 2, 3)]
    experts = [base + tv for tv in tvs]
    out = merge("iso_cts", base, experts, common_space_fraction=0.4)
    s = sv(out - base)
    np.testing.assert_allclose(s, np.full(9, s.mean()), atol=1e-10)  # all 9 equal
    assert not np.allclose((out - base).numpy(), (merge("iso_c", base, experts) - base).numpy(), atol=1e-3)
    torch.testing.assert_close(merge("iso_cts", base, experts, common_space_fraction=1.0),
                               merge("iso_c", base, experts), rtol=0, atol=1e-10)


# -- STAR -------------------------------------------------------------------------------------------

def test_star_hand_case():
    # tau = [[3, 0], [0, 1], [0, 0]]: singular values 3, 1 (nuclear norm 4). eta 40: 3 >= 1.6,
    # rank 1, rescaled by 4 / 3 to 4. eta 80: 3 < 3.2, rank 2, unchanged.
    base = t([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    tau = t([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    out = merge("star", base, [base + tau], eta=40)
    torch.testing.assert_close(out - base, t([[4.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), rtol=0, atol=1e-12)
    torch.testing.assert_close(merge("star", base, [base + tau], eta=80), base + tau, rtol=0, atol=1e-12)
    # two tasks: the mean of the processed task vectors, [[4, 0], ...] and [[0, 0], [0, 2], ...]
    tau2 = t([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    out = merge("star", base, [base + tau, base + tau2], eta=40)
    torch.testing.assert_close(out - base, t([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 25.0, 40.0, 90.0, 100.0])
def test_star_matches_numpy_and_keeps_each_nuclear_norm(eta):
    base = rand((7, 5), 0)
    tvs = [rand((7, 5), i) for i in (1, 2)]
    out = merge("star", base, [base + tv for tv in tvs], eta=eta)
    expected = sum(np_star(tv.numpy(), eta) for tv in tvs) / 2
    np.testing.assert_allclose((out - base).numpy(), expected, atol=1e-10)
    single = merge("star", base, [base + tvs[0]], eta=eta) - base
    assert sv(single).sum() == pytest.approx(sv(tvs[0]).sum(), rel=1e-12)


def test_star_zero_task_vector_stays_zero():
    base, tau = rand((4, 3), 0), rand((4, 3), 1)
    out = merge("star", base, [base.clone(), base + tau], eta=40)
    np.testing.assert_allclose((out - base).numpy(), np_star(tau.numpy(), 40) / 2, atol=1e-12)


# -- all four ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["model.layers.0.input_layernorm.weight", "model.embed_tokens.weight",
                                  "lm_head.weight", "transformer.wte.weight"])
def test_vectors_and_vocabulary_tables_get_the_mean_task_vector(method, name):
    shape = (6,) if "layernorm" in name else (10, 4)
    base = rand(shape, 0)
    tvs = [rand(shape, i) for i in (1, 2, 3)]
    params = {} if method == "star" else {"alpha": 0.6}
    out = merge(method, base, [base + tv for tv in tvs], name=name, **params)
    scale = params.get("alpha", 1.0)
    torch.testing.assert_close(out, base + scale * sum(tvs) / 3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(method, dtype):
    base = (0.1 * rand((16, 12), 0, torch.float32)).to(dtype)
    experts = [(base.float() + 0.01 * rand((16, 12), i, torch.float32)).to(dtype) for i in (1, 2)]
    out = merge(method, base, experts)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = merge(method, base.float(), [x.float() for x in experts])
    torch.testing.assert_close(out, ref.to(dtype))


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_task_vectors_give_the_base(method):
    base = rand((6, 5), 0, torch.float32)
    for tensors in ([base.clone()], [base.clone(), base.clone(), base.clone()]):
        out = merge(method, base, tensors)
        assert torch.isfinite(out).all() and torch.equal(out, base)
    zeros = torch.zeros(6, 5)
    assert torch.equal(merge(method, zeros, [zeros.clone(), zeros.clone()]), zeros)


@pytest.mark.parametrize("method", METHODS)
def test_parameters_are_bounded(method):
    for p in get_method(method).params:
        assert p.scope is Scope.SHARED
        assert p.type is float and p.low is not None and p.high is not None, p.name
    assert get_method(method).base.value == "required"


@pytest.mark.parametrize("method", METHODS)
def test_bad_inputs_are_refused_naming_the_tensor(method):
    base = rand((5, 4), 0, torch.float32)
    with pytest.raises(ValueError, match=rf"input 1 of tensor '{W}' has shape \(4, 5\)"):
        merge(method, base, [base.clone(), base.T.clone()])
    bad = base.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"{method}: the singular value decomposition of tensor '{W}'.*NaN or inf"):
        merge(method, base, [bad, base + 1])


# -- through a recipe -------------------------------------------------------------------------------

def test_out_of_range_parameters_are_refused_before_any_compute(tmp_path):
    from evomerge.merge.plan import check_parameter_ranges

    for method, params, bad in (("tsv", {"alpha": 3.5}, "alpha"), ("tsv", {"rank_fraction": 1.5}, "rank_fraction"),
                                ("iso_cts", {"common_space_fraction": -0.1}, "common_space_fraction"),
                                ("star", {"eta": 140}, "eta")):
        recipe = Recipe.from_dict({"merge_method": method, "base_model": "b",
                                   "models": [{"model": "x"}], "parameters": params})
        with pytest.raises(RecipeError, match=rf"parameters.{bad}: .* is outside"):
            check_parameter_ranges(recipe)


@pytest.mark.parametrize("method", METHODS)
def test_a_recipe_merges_a_tiny_llama(tmp_path, method):
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.testing import llama_config, llama_state, save_model

    config = llama_config(tied=False, layers=2)
    gen = torch.Generator().manual_seed(0)
    base = llama_state(config, gen)
    experts = [{k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(2)]
    paths = {"base": save_model(tmp_path / "base", base, config)}
    for i, sd in enumerate(experts):
        paths[f"e{i}"] = save_model(tmp_path / f"e{i}", sd, config)
    recipe = Recipe.from_dict({"merge_method": method, "base_model": str(paths["base"]),
                               "models": [{"model": str(paths["e0"])}, {"model": str(paths["e1"])}]})
    merged = InMemoryMerger({str(p): p for p in paths.values()}).merge(recipe)
    assert set(merged) == set(base) and all(torch.isfinite(v).all() for v in merged.values())
    direct = merge(method, base[W], [sd[W] for sd in experts])
    torch.testing.assert_close(merged[W], direct)
    emb = "model.embed_tokens.weight"
    torch.testing.assert_close(merged[emb], base[emb] + (experts[0][emb] + experts[1][emb] - 2 * base[emb]) / 2)
    with pytest.raises(MergekitExportError, match=rf"merge_method '{method}' is evomerge's own"):
        to_mergekit(recipe)
