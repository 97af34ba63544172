"""benchmarks/known_optimum.py's fitness: the equal-weight merge scores 0 and the secret one 1,
in both spaces, and an ask/tell run of two evaluations goes through (seconds, no zoo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.merge.in_memory import InMemoryMerger

BENCHMARK = "known_optimum"  # loaded by conftest.bench


@pytest.mark.parametrize("kind", ["6", "groups"])
def test_equal_weight_scores_0_and_the_secret_1(bench, kind, tmp_path):
    models = bench.make_models(tmp_path)
    space = bench.load(bench.space_dict(models, kind))
    assert len(space.genes()) == (6 if kind == "6" else 36)
    fitness = bench.Closeness(space, InMemoryMerger({m: Path(m) for m in space.source_models()}),
                              bench.secret_point(space, kind))
    assert fitness(bench.equal_point(space)) == pytest.approx(0.0, abs=1e-6)
    assert fitness(bench.secret_point(space, kind)) == pytest.approx(1.0, abs=1e-6)
    trace = bench.run_one("random", len(space.genes()), 0, 2, fitness)
    assert len(trace) == 2 and trace[1] >= trace[0]
