"""The Tune tests' run: the mini zoo and a multi-fidelity run config over it, once per package."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import write_run

from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo

# Three levels of the mini zoo's zoo_text task (96 examples), eta 2: Tune's fidelity_budget is
# 1, 2, 4 at the three levels, and ASHA's rungs fall on the first two.
LEVELS = [4, 16, None]


@pytest.fixture(scope="package")
def zoo(tmp_path_factory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


@pytest.fixture(scope="package")
def run_config(tmp_path_factory, zoo) -> Path:
    """The run config: random search (seed 3), three fidelity levels, one torch thread."""
    return write_run(tmp_path_factory.mktemp("tune-run"), zoo, fidelity=None, seed=3,
                     multi_fidelity={"levels": LEVELS, "eta": 2, "bracket": 4},
                     executor={"torch_threads": 1}, budget={"trials": 8})


@pytest.fixture(scope="package")
def tune_run(run_config):
    from evomerge.integrations.tune import load_tune_run

    return load_tune_run(run_config)
