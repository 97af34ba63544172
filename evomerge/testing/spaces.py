"""Conformance suite for search-space kinds: the ``Space`` contract of ``evomerge.search.space``.

Each kind is checked through a space file of that kind over a tiny model family
(``evomerge.testing.make_family``: a base and three experts, 3 layers, written
for the test; model paths in the file are relative to its folder): the file
loads as the kind's class; genes
have unique names and sane ranges and ``dimension == len(genes())``; decoding
a random point of ``[0, 1]^d`` gives a valid recipe (it survives a YAML round
trip unchanged) that reads only ``source_models()``; decoding is deterministic
and the corners 0 and 1 decode; a genome of the wrong length is refused with a
``SearchSpaceError``; values outside the cube are clipped; every base model a
recipe names is the first source model, and every decoded recipe merges into a
resident model built from that first source (fitted to the recipe's depth)
with finite logits; and genes encode what they decode (``Gene.encode``, which
``warm_start`` uses), so a point re-encoded from its values decodes to the same
recipe.

The built-in kinds have example spaces in ``EXAMPLES``. To run the suite on your
own kind, give it a space file::

    # test_my_space.py
    import pytest
    from evomerge.testing.spaces import SpaceSuite

    @pytest.mark.parametrize("space_kind", ["my_kind"])
    class TestMySpace(SpaceSuite):
        @pytest.fixture
        def space_data(self, space_models):
            # space_models: {"base", "expert0", "expert1", "expert2"} -> paths relative to the file
            return {"kind": "my_kind", "models": [space_models["expert0"], space_models["expert1"]]}

(or override ``space_file`` to point at a YAML of your own).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from evomerge.recipe import Recipe
from evomerge.search.space.base import SPACE_KINDS, Gene, SearchSpaceError, Space, load_space


def _parameter(m: dict[str, str]) -> dict:
    return {
        "base_model": m["base"],
        "models": [m["expert0"], m["expert1"]],
        "methods": ["task_arithmetic", "ties", "linear"],
        "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.2, "high": 1.0}},
        "granularity": {"layers_per_group": 2, "filters": ["mlp"]},
    }


def _layer(m: dict[str, str]) -> dict:
    return {"kind": "layer", "models": [m["expert0"], m["expert1"]], "repeats": 2,
            "scale": {"low": 0.5, "high": 1.5}, "max_layers": 5}


def _slices(m: dict[str, str]) -> dict:
    return {"kind": "slices", "models": [m["expert0"], m["expert1"]], "slices": 2,
            "length": {"low": 1, "high": 3}, "scale": {"low": 0.5, "high": 1.5}}


def _joint(m: dict[str, str]) -> dict:
    parameter = _parameter(m)
    parameter["methods"] = ["task_arithmetic", "ties"]
    return {"kind": "joint", "parameter": parameter,
            "layer": {"models": ["merged", m["expert2"]], "repeats": 1, "scale": {"low": 0.5, "high": 1.5}}}


#: an example space per built-in kind, given the family's paths relative to the space file
EXAMPLES: dict[str, Callable[[dict[str, str]], dict]] = {
    "parameter": _parameter,
    "layer": _layer,
    "slices": _slices,
    "joint": _joint,
}


class SpaceSuite:
    """The search-space contract; ``space_kind`` is the registered kind under test."""

    #: random points decoded per check
    points = 8

    @pytest.fixture(params=SPACE_KINDS.names())
    def space_kind(self, request) -> str:
        return request.param

    @pytest.fixture(scope="class")
    def space_root(self, tmp_path_factory) -> Path:
        """A folder with the tiny family under ``models/``; space files are written here."""
        from evomerge.testing.models import make_family

        root = tmp_path_factory.mktemp("space_suite")
        make_family(root / "models", tied=False, n_experts=3, seed=5)
        return root

    @pytest.fixture
    def space_models(self, space_root) -> dict[str, str]:
        """The family's model references, relative to the space file's folder."""
        return {name: f"models/{name}" for name in ("base", "expert0", "expert1", "expert2")}

    @pytest.fixture
    def space_data(self, space_kind, space_models) -> dict:
        """The space file's content."""
        if space_kind not in EXAMPLES:
            pytest.fail(f"no example space of kind {space_kind!r}; give the suite one by overriding the "
                        f"space_data (or space_file) fixture")
        return EXAMPLES[space_kind](space_models)

    @pytest.fixture
    def space_file(self, space_root, space_kind, space_data) -> Path:
        path = space_root / f"{space_kind}.yaml"
        path.write_text(yaml.safe_dump(space_data, sort_keys=False))
        return path

    @pytest.fixture
    def space(self, space_file) -> Space:
        return load_space(space_file)

    # -- helpers -----------------------------------------------------------------------

    def random_points(self, space: Space, n: int | None = None, seed: int = 0) -> list[list[float]]:
        rng = random.Random(seed)
        return [[rng.random() for _ in range(space.dimension)] for _ in range(n or self.points)]

    @staticmethod
    def sources(space: Space, space_file: Path) -> dict[str, Path]:
        from evomerge.io.sources import resolve_sources

        return resolve_sources(space.source_models(), [space_file.parent])

    # -- the contract ------------------------------------------------------------------

    def test_the_file_loads_as_its_kind(self, space_kind, space_file, space):
        cls = SPACE_KINDS.get(space_kind)
        assert isinstance(cls, type) and issubclass(cls, Space)
        assert type(space) is cls and space.kind == space_kind

    def test_genes_are_named_once_and_count_the_dimension(self, space):
        genes = space.genes()
        assert genes and all(isinstance(g, Gene) for g in genes)
        names = [g.name for g in genes]
        assert all(isinstance(n, str) and n for n in names)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        assert not duplicates, f"gene names repeat: {duplicates}"
        assert space.dimension == len(genes)
        for g in genes:
            if g.choices:
                assert len(set(g.choices)) == len(g.choices), f"{g.name}: repeated choices"
            else:
                assert math.isfinite(g.low) and math.isfinite(g.high) and g.low <= g.high, g

    def test_random_points_decode_to_valid_recipes_over_the_source_models(self, space):
        sources = space.source_models()
        assert sources and len(set(sources)) == len(sources), f"source models {sources}"
        for x in self.random_points(space):
            recipe = space.decode(x)
            assert isinstance(recipe, Recipe)
            again = Recipe.from_yaml(recipe.to_yaml())
            assert again.content_hash() == recipe.content_hash(), "the recipe does not survive YAML"
            outside = [m for m in recipe.referenced_models() if m not in sources]
            assert not outside, f"the recipe reads {outside}, not among source_models() {sources}"

    def test_decoding_is_deterministic(self, space):
        points = self.random_points(space, 4, seed=1)
        first = [space.decode(x).content_hash() for x in points]
        again = [space.decode(list(x)).content_hash() for x in reversed(points)]
        assert first == list(reversed(again))

    def test_corners_decode_and_the_cube_is_clipped(self, space):
        d = space.dimension
        zeros, ones = space.decode([0.0] * d), space.decode([1.0] * d)
        assert isinstance(zeros, Recipe) and isinstance(ones, Recipe)
        assert space.decode([-0.5] * d).content_hash() == zeros.content_hash()
        assert space.decode([1.5] * d).content_hash() == ones.content_hash()
        mixed = [float(i % 2) for i in range(d)]
        space.decode(mixed)

    def test_a_genome_of_the_wrong_length_is_refused(self, space):
        for n in (space.dimension - 1, space.dimension + 1):
            with pytest.raises(SearchSpaceError):
                space.decode([0.5] * n)

    def test_recipes_merge_into_a_resident_model_of_the_first_source(self, space, space_file):
        import torch

        from evomerge.io.hf import load_model
        from evomerge.merge.in_memory import InMemoryMerger
        from evomerge.merge.resident import fit_layers

        first = space.source_models()[0]
        paths = self.sources(space, space_file)
        merger = InMemoryMerger(paths)
        model = load_model(paths[first])
        corners = [[0.0] * space.dimension, [1.0] * space.dimension]
        for x in self.random_points(space, 4, seed=2) + corners:
            recipe = space.decode(x)
            bases = [recipe.base_model] + [s.base_model for s in recipe.slices or []]
            assert all(b in (None, first) for b in bases), f"base models {bases}; the first source is {first}"
            plan = merger.plan(recipe)
            fit_layers(model, plan.num_layers)
            merger.merge(recipe, into=model, plan=plan)
            with torch.no_grad():
                logits = model(torch.tensor([[1, 2, 3, 4]])).logits
            assert torch.isfinite(logits).all(), f"non-finite logits for {recipe.summary()}"

    def test_genes_encode_what_they_decode(self, space):
        genes = space.genes()
        for x in self.random_points(space, 4, seed=3):
            values = [g.value(u) for g, u in zip(genes, x, strict=True)]
            encoded = [g.encode(v) for g, v in zip(genes, values, strict=True)]
            assert all(0.0 <= u <= 1.0 for u in encoded)
            for g, v, u in zip(genes, values, encoded, strict=True):
                assert g.value(u) == (v if g.choices or g.integer else pytest.approx(v, rel=1e-9, abs=1e-12)), g
            assert space.decode(encoded).content_hash() == space.decode(x).content_hash(), (
                "a point re-encoded from its gene values decodes to another recipe")
