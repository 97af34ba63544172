"""evomerge's merges equal mergekit's (the reference) on tiny Llama models.

Both run on the same config: evomerge loads mergekit's YAML schema unchanged.
fp32 tensors must agree to 1e-6; randomised methods are checked by law in
test_methods.py instead, since the two draw masks from different RNG streams.
"""

from __future__ import annotations

import json

import pytest
import torch
from mergekit_ref import load_dir, run_mergekit

from evomerge.merge.engine import merge_to_disk
from evomerge.recipe import Recipe

SELF_ATTN_MLP = [
    {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
    {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
    {"value": 0.5},
]


def _models(m, entries):
    return [{"model": str(m[name]), **({"parameters": p} if p else {})} for name, p in entries]


CASES = {
    "linear": lambda m: {
        "merge_method": "linear",
        "models": _models(
            m,
            [
                ("base", {"weight": 1.0}),
                ("expert0", {"weight": 0.5}),
                ("expert1", {"weight": 0.25}),
            ],
        ),
    },
    "linear_gradient_filters": lambda m: {
        "merge_method": "linear",
        "models": _models(
            m,
            [
                (
                    "expert0",
                    {
                        "weight": [
                            {"filter": "self_attn", "value": [0.1, 0.9]},
                            {"filter": "mlp", "value": 0.3},
                            {"value": 0.5},
                        ]
                    },
                ),
                ("expert1", {"weight": [0.7, 0.2, 0.4]}),
            ],
        ),
        "parameters": {"normalize": True},
    },
    "task_arithmetic": lambda m: {
        "merge_method": "task_arithmetic",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", {"weight": 0.6}), ("expert1", {"weight": [0.2, 1.0]})]),
        "parameters": {"lambda": 0.8},
    },
    "ties": lambda m: {
        "merge_method": "ties",
        "base_model": str(m["base"]),
        "models": _models(
            m,
            [
                ("expert0", {"weight": [0.3, 1.0], "density": 0.5}),
                (
                    "expert1",
                    {"weight": 0.7, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]},
                ),
                ("expert2", {"weight": 0.5, "density": 0.9}),
            ],
        ),
        "dtype": "float32",
    },
    "ties_unnormalized_int8": lambda m: {
        "merge_method": "ties",
        "base_model": str(m["base"]),
        "models": _models(
            m,
            [
                ("base", None),
                ("expert0", {"weight": 1.0, "density": 0.4}),
                ("expert1", {"weight": -0.5, "density": 0.6}),
            ],
        ),
        "parameters": {"normalize": False, "int8_mask": True},
    },
    "breadcrumbs": lambda m: {
        "merge_method": "breadcrumbs",
        "base_model": str(m["base"]),
        "models": _models(
            m,
            [
                ("expert0", {"weight": 0.6, "density": 0.8, "gamma": 0.05}),
                ("expert1", {"weight": 0.4, "density": 0.7}),
            ],
        ),
    },
    "breadcrumbs_ties": lambda m: {
        "merge_method": "breadcrumbs_ties",
        "base_model": str(m["base"]),
        "models": _models(
            m,
            [
                ("expert0", {"weight": 0.6, "density": 0.8, "gamma": 0.02}),
                ("expert1", {"weight": 0.4, "density": 0.7}),
            ],
        ),
        "parameters": {"rescale": True},
    },
    "slerp_slices": lambda m: {
        "merge_method": "slerp",
        "base_model": str(m["base"]),
        "slices": [
            {
                "sources": [
                    {"model": str(m["base"]), "layer_range": [0, 3]},
                    {"model": str(m["expert0"]), "layer_range": [0, 3]},
                ]
            }
        ],
        "parameters": {"t": SELF_ATTN_MLP},
    },
    "slerp_models": lambda m: {
        "merge_method": "slerp",
        "base_model": str(m["base"]),
        "models": _models(m, [("base", None), ("expert1", None)]),
        "parameters": {"t": 0.3},
    },
    "nuslerp_with_base": lambda m: {
        "merge_method": "nuslerp",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", {"weight": 0.7}), ("expert1", {"weight": 0.3})]),
    },
    "nuslerp_row_wise": lambda m: {
        "merge_method": "nuslerp",
        "models": _models(m, [("expert0", {"weight": 0.4}), ("expert1", {"weight": 0.6})]),
        "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
    },
    "nearswap": lambda m: {
        "merge_method": "nearswap",
        "base_model": str(m["base"]),
        "models": _models(m, [("base", None), ("expert0", None)]),
        "parameters": {"t": [0.0005, 0.01, 0.05]},
    },
    "multislerp_with_base": lambda m: {
        "merge_method": "multislerp",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", {"weight": 0.5}), ("expert1", {"weight": [0.1, 0.6]}),
                              ("expert2", {"weight": 0.2})]),
    },
    "multislerp_unnormalized": lambda m: {
        "merge_method": "multislerp",
        "models": _models(m, [("expert0", {"weight": 0.7}), ("expert2", {"weight": 0.4})]),
        "parameters": {"normalize_weights": False},
    },
    "karcher": lambda m: {
        "merge_method": "karcher",
        "models": _models(m, [("expert0", None), ("expert1", None), ("expert2", None)]),
    },
    "karcher_with_base_few_steps": lambda m: {
        "merge_method": "karcher",
        "base_model": str(m["base"]),
        "models": _models(m, [("base", None), ("expert0", None), ("expert1", None)]),
        "parameters": {"max_iter": 2, "tol": 1e-7},
    },
    "sce": lambda m: {
        "merge_method": "sce",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", None), ("expert1", None), ("expert2", None)]),
        "parameters": {"select_topk": [0.3, 0.8]},
    },
    "sce_all_entries": lambda m: {
        "merge_method": "sce",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", None), ("expert2", None)]),
    },
    "arcee_fusion": lambda m: {
        "merge_method": "arcee_fusion",
        "base_model": str(m["base"]),
        "models": _models(m, [("base", None), ("expert1", None)]),
    },
    "ram": lambda m: {
        "merge_method": "ram",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", None), ("expert1", None), ("expert2", None)]),
        "parameters": {"epsilon": 0.004},
    },
    "ramplus_tl": lambda m: {
        "merge_method": "ramplus_tl",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", None), ("expert1", None), ("expert2", None)]),
        "parameters": {"epsilon": [0.002, 0.006], "r": 0.5, "alpha": 0.8},
    },
    "model_stock": lambda m: {
        "merge_method": "model_stock",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", None), ("expert1", None), ("expert2", None)]),
    },
    "model_stock_filter_wise": lambda m: {
        "merge_method": "model_stock",
        "base_model": str(m["base"]),
        "models": _models(m, [("expert0", None), ("expert1", None)]),
        "parameters": {"filter_wise": True},
    },
    "passthrough_frankenmerge": lambda m: {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(m["expert0"]), "layer_range": [0, 2]}]},
            {
                "sources": [{"model": str(m["expert1"]), "layer_range": [1, 3]}],
                "parameters": {
                    "scale": [
                        {"filter": "o_proj", "value": 0.5},
                        {"filter": "down_proj", "value": 0.5},
                    ]
                },
            },
            {"sources": [{"model": str(m["expert2"]), "layer_range": [2, 3]}]},
        ],
    },
    "ties_per_slice": lambda m: {
        "merge_method": "ties",
        "base_model": str(m["base"]),
        "slices": [
            # Same number of sources as the last slice: mergekit pairs the last slice's models with the
            # first slice's source count for the final norm/head (zip truncation); evomerge uses all of them.
            {
                "sources": [
                    {"model": str(m["base"]), "layer_range": [0, 2]},
                    {
                        "model": str(m["expert0"]),
                        "layer_range": [0, 2],
                        "parameters": {"weight": 1.0, "density": 0.5},
                    },
                    {
                        "model": str(m["expert2"]),
                        "layer_range": [0, 2],
                        "parameters": {"weight": 0.3, "density": 0.8},
                    },
                ]
            },
            {
                "sources": [
                    {"model": str(m["base"]), "layer_range": [1, 3]},
                    {"model": str(m["expert1"]), "layer_range": [1, 3]},
                    {"model": str(m["expert2"]), "layer_range": [1, 3]},
                ],
                "parameters": {"weight": [0.2, 0.8], "density": 0.6},
            },
        ],
    },
}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """mergekit output per (family, case), computed once."""
    cache = {}

    def get(family_name, family, case):
        key = (family_name, case)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"mk-{family_name}-{case}")
            cache[key] = run_mergekit(CASES[case](family), out / "model")
        return cache[key]

    return get


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family_name", ["untied", "tied"])
def test_matches_mergekit(case, family_name, untied_family, tied_family, reference_runs, tmp_path):
    family = untied_family if family_name == "untied" else tied_family
    config = CASES[case](family)
    expected = reference_runs(family_name, family, case)

    result = merge_to_disk(Recipe.from_dict(config), tmp_path / "out")
    got = load_dir(result.out)

    assert sorted(got) == sorted(expected)
    for name, ref in expected.items():
        assert got[name].dtype == ref.dtype, name
        assert got[name].shape == ref.shape, name
        diff = (got[name].double() - ref.double()).abs().max().item()
        assert diff <= 1e-6, f"{case}/{family_name}: {name} differs by {diff}"
    config_out = json.loads((result.out / "config.json").read_text())
    n_layers = sum(1 for k in expected if k.endswith("input_layernorm.weight"))
    assert config_out["num_hidden_layers"] == n_layers


def test_bfloat16_compute_matches_mergekit(untied_family, tmp_path):
    config = {**CASES["linear"](untied_family), "dtype": "bfloat16", "out_dtype": "float32"}
    expected = run_mergekit(config, tmp_path / "mk")
    got = load_dir(merge_to_disk(Recipe.from_dict(config), tmp_path / "ev").out)
    for name, ref in expected.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], ref), name


def test_every_method_mergekit_registers_is_an_evomerge_method():
    from mergekit.merge_methods.registry import registered_methods

    from evomerge.methods import METHODS

    theirs = {m.name() if callable(getattr(m, "name", None)) else m.spec.name for m in registered_methods()}
    assert theirs and theirs <= set(METHODS.names()), sorted(theirs - set(METHODS.names()))
