"""benchmarks/replay_landscape.py: the recorded zoo landscape replays its recordings, and the
short form (CI) fails when an optimiser needs clearly more evaluations than recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # spawned workers import it by name too
    try:
        import replay_landscape

        yield replay_landscape
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_committed_fit_replays_the_recording(bench):
    recorded = np.load(bench.DATA)
    assert str(np.load(bench.FIT)["data"]) == bench._digest(bench.DATA), "the fit is not of this recording"
    land = bench.Landscape.load()  # the committed fit: no refitting here
    predicted = np.array([land(x) for x in recorded["genomes"]])
    assert np.corrcoef(predicted, recorded["fitness"])[0, 1] > 0.99
    assert land.optimum == pytest.approx(float(recorded["fitness"].max()))  # capped at the best recording
    assert land(land.argmax) >= 0.999 * land.optimum
    a = bench.evaluations_to("cmaes", 3, 60, land)
    assert a == bench.evaluations_to("cmaes", 3, 60, land)  # replays are deterministic


def test_worse_figures_are_flagged(bench):
    ref = {"cmaes": {"median_to_95": 100.0, "reached_95": 8}, "random": {"median_to_95": float("inf"), "reached_95": 0}}
    assert bench.worse_than({"cmaes": {"median_to_95": 130.0, "reached_95": 7},
                             "random": {"median_to_95": float("inf"), "reached_95": 0}}, ref) == []
    worse = bench.worse_than({"cmaes": {"median_to_95": 140.0, "reached_95": 8}}, ref)
    assert len(worse) == 1 and worse[0].startswith("cmaes")
    assert bench.worse_than({"cmaes": {"median_to_95": 90.0, "reached_95": 5}}, ref)


@pytest.mark.slow
def test_short_form_holds_the_recorded_figures(bench):
    reference = json.loads(bench.REFERENCE.read_text())
    assert reference["data"] == bench._digest(bench.DATA)
    now = bench.short_form()
    assert bench.worse_than(now, reference["figures"]) == []
