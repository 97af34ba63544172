"""Conformance suite for merge methods: every method in ``evomerge.methods.METHODS``.

A merge method is a pure function on tensors (``evomerge.merge.registry``). The
suite calls it the way the planner does, with ``TensorGroup``s built from its
``MethodSpec`` (the base policy says whether a base tensor goes in, ``min_inputs``
/ ``max_inputs`` how many inputs, ``randomized`` whether a seed does), and checks:
the spec loads by name; every declared input count and an optional base are
accepted; the output keeps the input's shape and dtype and is finite on finite
input (random, all zero, all equal); identical inputs give that tensor back;
inputs are never changed in place; per-model parameters take one value per input;
the same call (and seed) gives the same output, and for randomised methods another
seed gives another output.

The suite is registry-driven: a method passes by being registered (a module with
``@merge_method`` and a line in ``evomerge.methods``, or an entry point in
``evomerge.merge_methods``). To run it on your own method::

    # test_my_method.py
    import pytest
    from evomerge.testing.methods import MethodSuite

    @pytest.mark.parametrize("method_name", ["my_method"])
    class TestMyMethod(MethodSuite):
        pass

Without the ``parametrize`` line it runs on every registered method. Parameters
without a default get 0.5 (numbers) or False (flags); override ``params`` (and
``random_params``, the values under which a randomised method draws random
numbers) when yours need others, and add the method's name to ``not_idempotent``
if merging identical inputs is not meant to return them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from evomerge.merge.registry import BasePolicy, MethodSpec, Scope, TensorGroup, get_method
from evomerge.methods import METHODS

SHAPES = [(24, 20), (20,)]  # a matrix and a vector (norm weights, biases)
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _random(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


class MethodSuite:
    """The merge-method contract; ``method_name`` is the registered name under test."""

    #: methods for which merging identical inputs is not meant to give them back
    not_idempotent: ClassVar[set[str]] = set()

    @pytest.fixture(params=METHODS.names())
    def method_name(self, request) -> str:
        return request.param

    @pytest.fixture
    def spec(self, method_name) -> MethodSpec:
        return get_method(method_name)

    # -- hooks -------------------------------------------------------------------------

    def params(self, spec: MethodSpec, n: int) -> dict[str, Any]:
        """Valid parameter values for ``n`` inputs, as the planner passes them (per-model ones
        as lists of ``n``)."""
        out = {}
        for p in spec.params:
            if not p.required:
                value = p.default
            elif p.type is float:
                value = 0.5
            elif p.type is bool:
                value = False
            else:
                pytest.fail(f"{spec.name}: parameter {p.name!r} ({p.type.__name__}) has no default; "
                            f"override MethodSuite.params to give the suite a valid value")
            out[p.name] = [value] * n if p.scope is Scope.PER_MODEL else value
        return out

    def random_params(self, spec: MethodSpec, n: int) -> dict[str, Any]:
        """Parameters under which a randomised method draws random numbers (a density below 1)."""
        params = self.params(spec, n)
        if "density" in params:
            params["density"] = [0.5] * n if isinstance(params["density"], list) else 0.5
        return params

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def input_counts(spec: MethodSpec) -> list[int]:
        """Input counts the method declares it takes (a few of them)."""
        low = spec.min_inputs
        high = spec.max_inputs if spec.max_inputs is not None else max(low, 1) + 2
        return sorted({low, min(low + 1, high), high, max(low, min(2, high))})

    @staticmethod
    def typical_count(spec: MethodSpec) -> int:
        n = max(spec.min_inputs, 2)
        return n if spec.max_inputs is None else min(n, spec.max_inputs)

    @staticmethod
    def base_options(spec: MethodSpec) -> list[bool]:
        """Whether a base goes in: always (required), never (input), both ways (optional)."""
        return {BasePolicy.REQUIRED: [True], BasePolicy.INPUT: [False]}.get(spec.base, [False, True])

    def group(self, spec: MethodSpec, tensors, base=None, seed: int | None = 7,
              name: str = "model.layers.0.mlp.up_proj.weight", layer: int | None = 0,
              num_layers: int | None = 2) -> TensorGroup:
        """The group the planner would build (``layer``/``num_layers``: the output layer and
        depth it fills in, which depth-scaled methods read)."""
        return TensorGroup(name, list(tensors), base, seed=seed if spec.randomized else None,
                           layer=layer, num_layers=num_layers)

    def call(self, spec: MethodSpec, group: TensorGroup, params: dict | None = None) -> torch.Tensor:
        params = self.params(spec, len(group.tensors)) if params is None else params
        out = spec.fn(group, **params)
        assert isinstance(out, torch.Tensor), f"{spec.name} returned {type(out).__name__}, not a tensor"
        return out

    def inputs(self, spec: MethodSpec, n: int, with_base: bool, shape=SHAPES[0], dtype=torch.float32,
               seed: int = 0):
        tensors = [_random(shape, seed + 1 + i, dtype) for i in range(n)]
        base = _random(shape, seed, dtype) if with_base else None
        return tensors, base

    # -- the contract ------------------------------------------------------------------

    def test_spec_loads_by_name(self, method_name, spec):
        assert isinstance(spec, MethodSpec) and spec.name == method_name
        assert METHODS.get(method_name) is spec
        assert callable(spec.fn)
        names = [p.name for p in spec.params]
        assert len(names) == len(set(names)), f"parameters declared twice: {names}"
        assert spec.min_inputs >= 0
        assert spec.max_inputs is None or spec.max_inputs >= max(spec.min_inputs, 1)
        assert all(p.scope in (Scope.SHARED, Scope.PER_MODEL) for p in spec.params)
        for p in spec.params:
            if not p.required and p.default is not None:
                assert p.coerce(p.default) == p.default, f"default of {p.name!r} is not of its type"
        # A recipe naming it validates (the recipe reads the catalogue, not the engine).
        from evomerge.recipe import Recipe

        assert Recipe.from_dict({"merge_method": method_name, "models": [{"model": "a"}]}).merge_method == method_name

    def test_every_declared_input_count_is_accepted(self, spec):
        for n in self.input_counts(spec):
            for with_base in self.base_options(spec):
                if n == 0 and not with_base:
                    continue  # nothing to merge
                tensors, base = self.inputs(spec, n, with_base)
                out = self.call(spec, self.group(spec, tensors, base))
                assert out.shape == SHAPES[0], f"{n} inputs, base={with_base}"
                assert torch.isfinite(out).all(), f"{n} inputs, base={with_base}"

    @pytest.mark.parametrize("shape", SHAPES, ids=["matrix", "vector"])
    @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
    def test_output_keeps_shape_and_dtype(self, spec, shape, dtype):
        n = self.typical_count(spec)
        for with_base in self.base_options(spec):
            tensors, base = self.inputs(spec, n, with_base, shape, dtype)
            out = self.call(spec, self.group(spec, tensors, base))
            assert tuple(out.shape) == tuple(shape)
            assert out.dtype == dtype, f"{dtype} inputs gave {out.dtype} (base={with_base})"
            assert out.device == tensors[0].device

    @pytest.mark.parametrize("case", ["random", "zeros", "equal", "opposite"])
    def test_finite_inputs_give_a_finite_output(self, spec, case):
        n = self.typical_count(spec)
        for with_base in self.base_options(spec):
            tensors, base = self.inputs(spec, n, with_base)
            if case == "zeros":
                tensors, base = [torch.zeros_like(t) for t in tensors], None if base is None else torch.zeros_like(base)
            elif case == "equal":  # colinear inputs, deltas of zero
                tensors = [tensors[0].clone() for _ in tensors]
                base = None if base is None else tensors[0].clone()
            elif case == "opposite":  # antipodal inputs
                tensors = [tensors[0] * (-1) ** i for i in range(n)]
                base = None if base is None else -tensors[0]
            out = self.call(spec, self.group(spec, tensors, base))
            assert torch.isfinite(out).all(), f"non-finite output for {case} inputs (base={with_base})"

    def test_identical_inputs_give_that_tensor_back(self, spec):
        if spec.name in self.not_idempotent:
            pytest.skip(f"{spec.name} is declared not idempotent")
        x = _random(SHAPES[0], 11)
        for n in self.input_counts(spec):
            for with_base in self.base_options(spec):
                if n == 0 and not with_base:
                    continue
                group = self.group(spec, [x.clone() for _ in range(n)], x.clone() if with_base else None)
                out = self.call(spec, group)
                torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5,
                                           msg=lambda m, n=n, b=with_base: f"{n} inputs, base={b}: {m}")

    def test_inputs_are_not_changed_in_place(self, spec):
        n = self.typical_count(spec)
        for with_base in self.base_options(spec):
            tensors, base = self.inputs(spec, n, with_base)
            before = [t.clone() for t in tensors] + ([base.clone()] if base is not None else [])
            out = self.call(spec, self.group(spec, tensors, base))
            after = tensors + ([base] if base is not None else [])
            assert out.shape == SHAPES[0]
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "an input was modified"

    def test_per_model_parameters_take_one_value_per_input(self, spec):
        per_model = spec.per_model_params
        if not per_model:
            pytest.skip(f"{spec.name} has no per-model parameters")
        n = self.typical_count(spec)
        for with_base in self.base_options(spec):
            tensors, base = self.inputs(spec, n, with_base)
            params = self.params(spec, n)
            for p in per_model:
                assert isinstance(params[p.name], list) and len(params[p.name]) == n
                if p.type is float and all(isinstance(v, float) for v in params[p.name]):
                    # distinct values per input, each scaled from the usable one
                    params[p.name] = [v * (0.6 + 0.4 * i / max(n - 1, 1)) for i, v in enumerate(params[p.name])]
            out = self.call(spec, self.group(spec, tensors, base), params)
            assert out.shape == SHAPES[0] and torch.isfinite(out).all()

    def test_same_call_same_output(self, spec):
        n = self.typical_count(spec)
        params = self.random_params(spec, n) if spec.randomized else self.params(spec, n)
        for with_base in self.base_options(spec):
            tensors, base = self.inputs(spec, n, with_base)
            a = self.call(spec, self.group(spec, tensors, base, seed=3), params)
            b = self.call(spec, self.group(spec, [t.clone() for t in tensors],
                                           None if base is None else base.clone(), seed=3), params)
            assert torch.equal(a, b), "two identical calls gave different outputs"

    def test_randomised_methods_follow_their_seed(self, spec):
        if not spec.randomized:
            pytest.skip(f"{spec.name} is not randomised")
        n = self.typical_count(spec)
        params = self.random_params(spec, n)
        for with_base in self.base_options(spec):
            tensors, base = self.inputs(spec, n, with_base)
            a = self.call(spec, self.group(spec, tensors, base, seed=1), params)
            b = self.call(spec, self.group(spec, tensors, base, seed=2), params)
            assert not torch.equal(a, b), (
                "another seed gave the same output: the method is declared randomized but does not "
                "draw from TensorGroup.seed (or random_params do not make it draw)"
            )
