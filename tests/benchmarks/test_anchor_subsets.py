"""benchmarks/anchor_subsets.py's ranking step on a synthetic outcome matrix (seconds, no zoo):
one value per seed for every k and column, anchors exact where the examples take fewer patterns
than k."""

from __future__ import annotations

import numpy as np
import pytest

BENCHMARK = "anchor_subsets"  # loaded by conftest.bench


def test_rank_correlations_on_a_synthetic_matrix(bench, capsys):
    rng = np.random.default_rng(0)
    patterns = (rng.random((30, 6)) < 0.5).astype(float)  # 30 models, 6 kinds of example
    data = {"groups": ["calibration"] * 10 + ["held_out"] * 20,
            "names": ["base", "average"] + [f"cal{i}" for i in range(8)] + [f"draw{i}" for i in range(20)]}
    for task in ("a", "b"):
        data[task] = patterns[:, rng.integers(0, 6, size=200)]
    res = bench.rank_correlations(data, ["a", "b"], [8, 16], [0, 1, 2])
    for method in ("anchors", "random"):
        for k in (8, 16):
            assert set(res[method][k]) == {"a", "b", "mean", "mean, top half", "top 1/3 kept"}
            assert all(len(v) == 3 and all(-1 <= x <= 1 for x in v) for v in res[method][k].values())
            assert all(0 <= x <= 1 for x in res[method][k]["top 1/3 kept"])
    assert all(x == pytest.approx(1.0) for v in res["anchors"][8].values() for x in v)
    draws = bench.rank_correlations(data, ["a", "b"], [8], [0], calibration="draws")
    assert draws["anchors"][8]["mean"] == pytest.approx([1.0])  # 8 draws still see every pattern
    bench.table(res, ["a", "b"], [8, 16])
    assert "anchors" in capsys.readouterr().out
